"""``metstrack info``: versions and compute environment."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from rich.table import Table

from metstrack import __version__
from metstrack.cli.common import console

_PACKAGES = ("torch", "monai", "nibabel", "SimpleITK", "numpy", "lightning", "lifelines", "pydicom")


def environment_info() -> dict[str, str]:
    """Return versions of Python and key packages, thread count and compute device."""
    info = {"metstrack": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    import torch

    info["torch_threads"] = str(torch.get_num_threads())
    info["cpu_count"] = str(os.cpu_count())
    if torch.cuda.is_available():
        info["device"] = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"
    else:
        info["device"] = "cpu"
    info["platform"] = f"{platform.system()} {platform.machine()}"
    info["executable"] = sys.executable
    return info


def info() -> None:
    """Print versions of Python, torch, MONAI, nibabel, SimpleITK, threads and device."""
    table = Table(title="metstrack environment", show_header=False)
    for k, v in environment_info().items():
        table.add_row(k, v)
    console.print(table)
