"""Figures to files: PNG and SVG written atomically, the figure closed afterwards.

The pure domains draw (:func:`metstrack.tracking.timeline.timeline_figure`,
:func:`metstrack.survival.km.kaplan_meier_figure`); this module writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from metstrack.core.atomic import atomic_path  # noqa: E402
from metstrack.survival.km import KaplanMeierResult, kaplan_meier_figure  # noqa: E402
from metstrack.tracking.timeline import timeline_figure  # noqa: E402


def save_figure(
    fig: Figure, stem: Path, formats: Sequence[str] = ("png", "svg"), *, dpi: float | None = None
) -> list[Path]:
    """Write ``<stem>.<format>`` for each format (atomically), then close the figure.

    Returns:
        The written paths, in ``formats`` order.
    """
    try:
        written = []
        for fmt in formats:
            target = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, **({"dpi": dpi} if dpi else {}))
            written.append(target)
        return written
    finally:
        plt.close(fig)


def plot_timeline(
    trajectories: pd.DataFrame,
    out_path: str | Path,
    *,
    treatment_days: Sequence[float] = (),
    title: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Draw one patient's lesion volumes over time and save it.

    Args:
        trajectories: Trajectory rows of ONE patient
            (:mod:`metstrack.tracking.trajectory` columns).
        out_path: File path without or with suffix; one file per format is
            written beside it (``<stem>.png``, ``<stem>.svg``), atomically.
        treatment_days: Days from baseline of treatments (radiosurgery),
            drawn as dashed vertical lines.
        title: Figure title (default: the patient ID).
        formats: Image formats to write.

    Returns:
        The written paths.
    """
    out_path = Path(out_path)
    stem = out_path.with_suffix("") if out_path.suffix in (".png", ".svg") else out_path
    fig = timeline_figure(trajectories, treatment_days=treatment_days, title=title)
    return save_figure(fig, stem, formats)


def plot_kaplan_meier(
    result: KaplanMeierResult, out_stem: str | Path, *, title: str = ""
) -> list[Path]:
    """Draw the curves with CIs and a numbers-at-risk table; write ``.png`` and ``.svg``."""
    fig = kaplan_meier_figure(result, title=title)
    return save_figure(fig, Path(out_stem), ("png", "svg"), dpi=110)
