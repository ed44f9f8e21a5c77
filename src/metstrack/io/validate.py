"""Validate a whole dataset and collect every problem into one report.

:func:`validate_dataset` never stops at the first problem. It runs the
layout's lenient scan (table errors, flags versus files, splits by patient,
clinical rows naming unknown patients or studies, days versus
``RelativeTimepoint``) and then reads every image of every study:

* ``readable``: the file opens as NIfTI (missing, truncated, corrupt files);
* ``image-valid``: 3D, finite voxels, usable affine and spacing;
* ``geometry``: every sequence and the label of a study share one grid
  (shape, and affine within ``atol_mm``), compared against the T1 post (CT1)
  or the first readable modality;
* ``label-binary``: label files hold 0/1 (integer classes >= 0 for layouts
  whose labels are multi-class, see :attr:`metstrack.types.Cohort.label_classes`).

Messages name files, columns and release IDs only; header fields that can
carry identifying text (NIfTI ``descrip``, ``db_name``) are never read out.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metstrack.core import schema
from metstrack.core.affine import spacing_array_mm
from metstrack.errors import DatasetError, ImageReadError, InvalidImageError, MetstrackError
from metstrack.io.layouts import detect_layout, resolve_layout, scan_dataset
from metstrack.io.nifti import read_volume
from metstrack.io.problems import ERROR, WARNING, DatasetScan, Problem
from metstrack.types import (
    AFFINE_ATOL_MM,
    LABEL_SEQUENCE,
    MODALITIES,
    PLANNING_SEQUENCE,
    Cohort,
    Study,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationReport:
    """Every problem found in a dataset plus summary counts.

    Attributes:
        root: The dataset folder.
        layout: The layout it was read as.
        problems: Every problem, in a stable order (table problems first, then
            each study's files in cohort order).
        n_patients: Patients read.
        n_studies: Studies read.
        n_files: Image files opened.
    """

    root: Path
    layout: str
    problems: tuple[Problem, ...]
    n_patients: int = 0
    n_studies: int = 0
    n_files: int = 0

    @property
    def errors(self) -> tuple[Problem, ...]:
        """Problems of severity ``"error"``."""
        return tuple(p for p in self.problems if p.severity == ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """Problems of severity ``"warning"``."""
        return tuple(p for p in self.problems if p.severity == WARNING)

    @property
    def n_errors(self) -> int:
        """Number of errors."""
        return len(self.errors)

    @property
    def n_warnings(self) -> int:
        """Number of warnings."""
        return len(self.warnings)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return self.n_errors == 0

    def counts_by_check(self) -> dict[str, dict[str, int]]:
        """``{check: {"error": n, "warning": m}}`` over all problems, checks sorted."""
        c = Counter((p.check, p.severity) for p in self.problems)
        out: dict[str, dict[str, int]] = {}
        for check in sorted({k for k, _ in c}):
            out[check] = {sev: c[(check, sev)] for sev in (ERROR, WARNING)}
        return out

    def relative(self, path: Path | None) -> str:
        """``path`` relative to the dataset root when inside it (``"."`` for the root)."""
        if path is None:
            return ""
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return str(path)
        return str(rel) if str(rel) != "." else "."

    def to_dict(self) -> dict:
        """JSON-ready summary and problems (files relative to the root)."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "summary": {
                "patients": self.n_patients,
                "studies": self.n_studies,
                "files": self.n_files,
                "errors": self.n_errors,
                "warnings": self.n_warnings,
                "ok": self.ok,
                "by_check": self.counts_by_check(),
            },
            "problems": [
                {
                    "severity": p.severity,
                    "file": self.relative(p.file),
                    "check": p.check,
                    "message": p.message,
                }
                for p in self.problems
            ],
        }


def validate_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    workers: int = 1,
    atol_mm: float = AFFINE_ATOL_MM,
    on_progress: Callable[[int, int], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ValidationReport:
    """Check a whole dataset and return every problem found.

    Args:
        root: Dataset folder.
        layout: A layout name of :data:`metstrack.io.layouts.LAYOUTS` or
            ``"auto"`` to detect it.
        workers: Threads reading images in parallel (studies are independent;
            NIfTI decompression releases the GIL). 1 reads serially.
        atol_mm: Tolerance on affine entries when comparing grids, in mm.
        on_progress: Called with (studies done, studies in all) after each
            study's files are checked (progress bars).
        options: Layout reader options (e.g. ``{"label_classes": (255,)}``), see
            :func:`metstrack.io.layouts.read_dataset`.

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is False when any error was found.

    Raises:
        DatasetError: ``root`` is not a folder, or its layout cannot be detected.
        ConfigError: ``layout`` is not a known layout name, or an option does not
            apply to it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    name = detect_layout(root) if layout == "auto" else resolve_layout(layout)
    try:
        scan = scan_dataset(root, name, **dict(options or {}))
    except DatasetError as exc:
        # The dataset's index itself is unusable (e.g. no imaging table): report it
        # and still check every image file under the root.
        scan = DatasetScan(None, (Problem(ERROR, root, "layout", str(exc)),), ())
    problems = list(scan.all_problems)
    cohort = scan.cohort
    studies = list(cohort.studies) if cohort is not None else []
    done = 0
    lock = threading.Lock()

    def check(study: Study) -> list[Problem]:
        nonlocal done
        assert cohort is not None
        out = check_study(study, cohort, atol_mm=atol_mm)
        if on_progress is not None:
            with lock:
                done += 1
                on_progress(done, len(studies))
        return out

    for r in _map(check, studies, workers):
        problems.extend(r)
    # Image files no study claims (rows that failed to parse, unlisted folders, an
    # unusable index) are still opened, so a corrupt file never goes unreported.
    covered = {s.path for st in studies for s in st.series}
    orphans = [p for p in _image_files(root, name) if p not in covered]
    for r in _map(lambda p: _check_files_readable([p]), orphans, workers):
        problems.extend(r)
    n_files = len(covered) + len(orphans)
    report = ValidationReport(
        root=root,
        layout=name,
        problems=tuple(problems),
        n_patients=len(cohort.patients) if cohort is not None else 0,
        n_studies=len(studies),
        n_files=n_files,
    )
    log.info(
        "%s: %d error(s), %d warning(s) in %d studies",
        root,
        report.n_errors,
        report.n_warnings,
        report.n_studies,
    )
    return report


def check_study(study: Study, cohort: Cohort, *, atol_mm: float = AFFINE_ATOL_MM) -> list[Problem]:
    """Read every file of one study and check readability, geometry and the label.

    Args:
        study: The study (its series paths are read).
        cohort: The cohort it belongs to (for ``label_classes``).
        atol_mm: Tolerance on affine entries when comparing grids, in mm.

    Returns:
        The problems found, in sequence order; empty when all is well.
    """
    problems: list[Problem] = []
    grids: dict[str, _GridOnly] = {}
    for series in study.series:
        is_label = series.sequence == LABEL_SEQUENCE
        try:
            # On-disk dtype: no float copy; NaN/inf are still checked for float files.
            vol = read_volume(series.path, dtype=None)
        except ImageReadError as exc:
            problems.append(Problem(ERROR, series.path, "readable", _strip(exc, series.path)))
            continue
        except InvalidImageError as exc:
            problems.append(Problem(ERROR, series.path, "image-valid", _strip(exc, series.path)))
            continue
        if is_label:
            msg = _label_problem(vol.array, multiclass=bool(cohort.label_classes))
            if msg:
                problems.append(Problem(ERROR, series.path, "label-binary", msg))
        # Keep only the geometry; drop the voxels to bound memory.
        grids[series.sequence] = _GridOnly(vol.shape, vol.affine, series.path)
        del vol
    ref_name = next((m for m in ("CT1", *MODALITIES) if m in grids), None)
    if ref_name is None:
        ref_name = next(iter(grids), None)
    if ref_name is None:
        return problems
    ref = grids[ref_name]
    for seq, g in grids.items():
        if seq == ref_name:
            continue
        if g.shape == ref.shape and np.allclose(g.affine, ref.affine, atol=atol_mm, rtol=0):
            continue
        severity = WARNING if seq == PLANNING_SEQUENCE else ERROR
        problems.append(
            Problem(
                severity,
                g.path,
                "geometry",
                f"grid differs from {ref.path.name} of the same study ({g.differences(ref)}); "
                "resample onto one grid (metstrack preprocess) or fix the header",
            )
        )
    return problems


@dataclass(frozen=True)
class _GridOnly:
    shape: tuple[int, ...]
    affine: np.ndarray
    path: Path

    def differences(self, ref: _GridOnly) -> str:
        """What differs from ``ref``: shape, spacing, origin, axes or direction."""
        out = []
        if tuple(self.shape) != tuple(ref.shape):
            out.append(f"shape {_tup(self.shape)} vs {_tup(ref.shape)}")
        sp, sp_ref = _spacing(self.affine), _spacing(ref.affine)
        if not np.allclose(sp, sp_ref, atol=1e-3):
            out.append(f"spacing {_tup(sp)} vs {_tup(sp_ref)} mm")
        if not np.allclose(self.affine[:3, 3], ref.affine[:3, 3], atol=1e-3):
            out.append(f"origin {_tup(self.affine[:3, 3])} vs {_tup(ref.affine[:3, 3])} mm")
        ax, ax_ref = _axcodes(self.affine), _axcodes(ref.affine)
        if ax != ax_ref:
            out.append(f"axes {ax} vs {ax_ref}")
        if not out:
            delta = float(np.abs(self.affine - ref.affine).max())
            out.append(f"affines differ by up to {delta:.3g} (direction or shear)")
        return ", ".join(out)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return spacing_array_mm(affine)


def _tup(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    try:
        return "".join(nib.aff2axcodes(affine))
    except Exception:  # noqa: BLE001 - only decorates a message
        return "?"


def _label_problem(arr: np.ndarray, *, multiclass: bool) -> str | None:
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            return "label holds NaN or infinite values"
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            return (
                f"label holds non-integer values (range {float(arr.min()):.3g}.."
                f"{float(arr.max()):.3g}); is it a probability map? threshold it first"
            )
    if arr.size and float(arr.min()) < 0:
        return f"label holds negative values (min {float(arr.min()):g})"
    if multiclass:
        return None
    values = np.unique(arr)
    extra = [float(v) for v in values if v not in (0, 1)]
    if extra:
        shown = ", ".join(f"{v:g}" for v in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        return (
            f"expected a binary mask (0/1), found value(s) {shown}{more}; "
            "for a multi-class label select the lesion classes first"
        )
    return None


def _check_files_readable(paths: list[Path]) -> list[Problem]:
    out = []
    for p in paths:
        try:
            read_volume(p, dtype=None)
        except ImageReadError as exc:
            out.append(Problem(ERROR, p, "readable", _strip(exc, p)))
        except InvalidImageError as exc:
            out.append(Problem(ERROR, p, "image-valid", _strip(exc, p)))
    return out


def _image_files(root: Path, layout: str) -> list[Path]:
    """Image files a layout's index should account for (release: under ``imaging/``)."""
    if layout == "release":
        base = root / schema.IMAGING_DIR
        if not base.is_dir():
            return []
    else:
        return []
    return sorted(p for p in base.rglob("*") if p.is_file() and _is_image(p))


def _is_image(p: Path) -> bool:
    name = p.name.lower()
    return not name.startswith(".") and (name.endswith(".nii") or name.endswith(".nii.gz"))


def _strip(exc: MetstrackError, path: Path) -> str:
    """The error's message without the leading ``<path>: `` (the report shows the file)."""
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def _map(fn, items, workers: int) -> list:
    if workers == 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
