"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted write leaves the
previous version (if any) intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A temporary file of :func:`atomic_path`: ``.<name>.<pid>-<random>.tmp<suffixes>``
#: (``.<name>.<random>.tmp<suffixes>`` before writer PIDs were recorded).
_TEMP_FILE = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp(?:\..*)?$")


@contextlib.contextmanager
def atomic_path(target: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary name keeps ``target``'s suffixes (so ``.nii.gz`` writers still
    compress). On an exception the temporary file is removed and ``target`` is
    left untouched.

    Args:
        target: Final file path. Its parent folder is created if needed.
        suffix: Suffix for the temporary file; defaults to ``target``'s suffixes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sfx = "".join(target.suffixes) if suffix is None else suffix
    # The writer's PID in the name lets a later run tell a killed writer's leftover
    # (swept by sweep_stale_temps) from a live one's file.
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}-", suffix=f".tmp{sfx}", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; outputs get the usual permissions (0666 minus the umask)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``target`` atomically (NaN written as ``null``)."""
    text = json.dumps(_nan_to_none(obj), indent=indent, sort_keys=False, default=str)
    return write_text_atomic(target, text + "\n")


def write_csv_atomic(target: str | Path, frame: Any, **kwargs: Any) -> Path:
    """Write a pandas DataFrame to CSV atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(target)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return _nan_to_none(obj.item())
        if isinstance(obj, np.ndarray):
            return _nan_to_none(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    return obj


def staging_prefix(name: str) -> str:
    """Prefix of a staging folder for ``name`` (``.<name>.partial-<pid>-``), see
    :func:`sweep_stale_staging`."""
    return f".{name}.partial-{os.getpid()}-"


def _writer_alive(pid: str | None) -> bool:
    """True when the process that made a temporary path may still be writing it."""
    if pid is None:  # written before PIDs were recorded: no such writer runs now
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def sweep_stale_temps(root: str | Path) -> int:
    """Remove temporary files that killed writers left under ``root`` (recursively).

    Only files named like :func:`atomic_path`'s temporaries whose writer process
    is gone are removed; a live writer's (another run's) files are kept.

    Returns:
        The number of files removed.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            m = _TEMP_FILE.match(name)
            if m is None or _writer_alive(m.group("pid")):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", root, removed)
    return removed


def sweep_stale_staging(parent: str | Path, name: str) -> int:
    """Remove staging folders ``.<name>.partial-*`` in ``parent`` left by killed runs.

    Returns:
        The number of folders removed.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    pattern = re.compile(rf"^\.{re.escape(name)}\.partial-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")
    removed = 0
    for entry in parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or not entry.is_dir() or _writer_alive(m.group("pid")):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.info("%s: removed %d staging folder(s) of interrupted runs", parent / name, removed)
    return removed
