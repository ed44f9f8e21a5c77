"""Every supported dataset layout behind one entry point, and the lesion-mask loader.

Layouts (see docs/datasets.md for each one's exact files):

* ``release``: NYUMets-Brain release (:mod:`metstrack.io.release`);
* ``brats-mets``: BraTS-METS case files (:mod:`metstrack.io.brats`);
* ``brainmetshare``: Stanford BrainMetShare, NIfTI-converted (:mod:`metstrack.io.brainmetshare`);
* ``bids``: BIDS-like ``sub-*/ses-*`` (:mod:`metstrack.io.bids`);
* ``study``: one folder of NIfTI sequences, named t1, t1c, t2, flair
  (:mod:`metstrack.io.study_folder`).

Layouts without dates (BraTS-METS, BIDS without session times) leave
``days_from_baseline`` NaN: the studies keep their timepoint order with the
interval unknown. :func:`apply_intervals` sets the days from a user table.

All return the same :class:`~metstrack.types.Cohort`. Consumers load a
study's metastasis mask with :func:`load_lesion_mask`, which applies the
cohort's ``label_classes`` (multi-class BraTS labels) so no caller needs to
know the layout.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from metstrack.core import schema
from metstrack.errors import ConfigError, DatasetError, LabelError, did_you_mean
from metstrack.io import bids, brainmetshare, brats, release, study_folder
from metstrack.io.nifti import check_same_grid, read_label
from metstrack.io.problems import DatasetScan
from metstrack.types import Cohort, Study, Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """One supported layout.

    Attributes:
        name: Name used by ``--layout`` and :attr:`Cohort.layout`.
        description: What its files look like.
        detect: True when a folder looks like this layout.
        scan: Lenient scan returning a :class:`~metstrack.io.problems.DatasetScan`.
        read: Reader returning a :class:`~metstrack.types.Cohort`.
        coregistered: The layout's provider co-registers every sequence of a study
            and stores them on one grid (BraTS-METS: all sequences resampled to
            the SRI24 atlas, 1 mm); preprocessing then need not register
            sequences that share the T1 post's grid again.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    scan: Callable[..., DatasetScan]
    read: Callable[..., Cohort]
    coregistered: bool = False


def _release_detect(root: Path) -> bool:
    return (
        schema.table_path(root, schema.IMAGING_TABLE).is_file()
        or (root / schema.IMAGING_DIR / "patientId").is_dir()
    )


#: Supported layouts, in detection priority order.
LAYOUTS: dict[str, Layout] = {
    "release": Layout(
        "release",
        "NYUMets-Brain release: imaging/patientId/<P>/studyId/<S>/<SEQ>.nii.gz + tables/",
        _release_detect,
        release.scan_release,
        release.read_release,
    ),
    "bids": Layout(
        "bids",
        "BIDS-like sub-*/ses-*/anat/sub-*_ses-*_{T1w,ce-gd_T1w,T2w,FLAIR}.nii.gz + derivatives",
        bids.detect,
        bids.scan_bids,
        bids.read_bids,
    ),
    "brats-mets": Layout(
        "brats-mets",
        "BraTS-METS: [BraTS-MET-nnnnn-ttt/]BraTS-MET-nnnnn-ttt-{t1n,t1c,t2w,t2f,seg}.nii.gz",
        brats.detect,
        brats.scan_brats_mets,
        brats.read_brats_mets,
        coregistered=True,
    ),
    "brainmetshare": Layout(
        "brainmetshare",
        "Stanford BrainMetShare (NIfTI): <case>/{t1_pre,t1_gd,flair,bravo,seg}.nii.gz",
        brainmetshare.detect,
        brainmetshare.scan_brainmetshare,
        brainmetshare.read_brainmetshare,
    ),
    "study": Layout(
        "study",
        "one study folder: {t1,t1c,t2,flair[,seg]}.nii.gz (also t1n/t1ce/t2w/t2f/CT1 ... names)",
        study_folder.detect,
        study_folder.scan_study_folder,
        study_folder.read_study_folder,
    ),
}


def resolve_layout(name: str) -> str:
    """Return ``name`` when it is a layout, else raise ConfigError with did-you-mean.

    Args:
        name: A layout name (``"auto"`` is not accepted here).
    """
    if name in LAYOUTS:
        return name
    raise ConfigError(f"unknown dataset layout {name!r}; " + did_you_mean(name, [*LAYOUTS, "auto"]))


def detect_layout(root: str | Path) -> str:
    """Detect the layout of a dataset folder.

    Args:
        root: Dataset folder.

    Returns:
        The name of the first layout (in :data:`LAYOUTS` order) whose files are present.

    Raises:
        DatasetError: ``root`` is not a folder or matches no layout (the
            message lists what each layout expects).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    matches = [name for name, lay in LAYOUTS.items() if lay.detect(root)]
    if not matches:
        expected = "; ".join(f"{n}: {lay.description}" for n, lay in LAYOUTS.items())
        raise DatasetError(
            f"{root}: no known dataset layout found (expected one of: {expected}); "
            "pass the layout explicitly if the files are elsewhere"
        )
    if len(matches) > 1:
        log.info("%s: matches layouts %s; using %s", root, matches, matches[0])
    return matches[0]


def _layout_and_options(root: Path, layout: str, options: dict[str, Any]) -> Layout:
    lay = LAYOUTS[detect_layout(root) if layout == "auto" else resolve_layout(layout)]
    allowed = [p for p in inspect.signature(lay.read).parameters if p != "root"]
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"option {key!r} does not apply to the {lay.name} layout; "
                + did_you_mean(key, allowed)
            )
    return lay


def read_dataset(root: str | Path, layout: str = "auto", **options: Any) -> Cohort:
    """Read a dataset in any supported layout.

    Args:
        root: Dataset folder.
        layout: A name of :data:`LAYOUTS`, or ``"auto"`` to detect it.
        **options: Passed to the layout's reader (``strict`` for all;
            ``label_classes`` for brats-mets, brainmetshare and bids;
            ``post_contrast`` for brainmetshare; ``derivative`` for bids).

    Returns:
        The cohort; ``cohort.layout`` names the layout read.

    Raises:
        ConfigError: Unknown layout name or option (with did-you-mean).
        DatasetError: Layout not detected, or the reader's table errors.
    """
    root = Path(root)
    lay = _layout_and_options(root, layout, options)
    return lay.read(root, **options)


def scan_dataset(root: str | Path, layout: str = "auto", **options: Any) -> DatasetScan:
    """Leniently scan a dataset in any supported layout (what ``validate`` uses).

    Args:
        root: Dataset folder.
        layout: A name of :data:`LAYOUTS`, or ``"auto"``.
        **options: The layout reader's options except ``strict``.

    Returns:
        A :class:`~metstrack.io.problems.DatasetScan`.
    """
    root = Path(root)
    lay = _layout_and_options(root, layout, options)
    return lay.scan(root, **options)


def load_lesion_mask(study: Study, cohort: Cohort, *, reference: Volume | None = None) -> Volume:
    """Load a study's binary metastasis mask, whatever the layout.

    Binary label files (release, BrainMetShare, BIDS masks) must hold 0/1;
    multi-class files (BraTS-METS ``seg``, BIDS ``dseg``) are reduced to the
    cohort's ``label_classes`` (a voxel is lesion when its class is one of them).

    Args:
        study: A study of ``cohort`` with a label file.
        cohort: The cohort (gives ``label_classes``).
        reference: When given, the mask must share its grid.

    Returns:
        A Volume with a ``uint8`` (X, Y, Z) array of 0/1 on the label file's grid.

    Raises:
        LabelError: The study has no label file, or its values are not a valid
            binary mask (or, multi-class, not non-negative integers).
        ImageReadError, InvalidImageError: The file cannot be read.
        GeometryMismatchError: Grid differs from ``reference``.
    """
    path = study.label_path
    if path is None:
        raise LabelError(
            f"study {study.study_id} (patient {study.patient_id}) has no label file; "
            "check study.label_path before loading"
        )
    if not cohort.label_classes:
        mask = read_label(path, binary=True)
    else:
        classes = read_label(path, binary=False)
        arr = np.isin(classes.array, np.asarray(cohort.label_classes)).astype(np.uint8)
        mask = classes.with_array(arr)
    if reference is not None:
        check_same_grid(reference, mask)
    return mask


#: Columns of an intervals table (:func:`apply_intervals`).
INTERVAL_COLUMNS: tuple[str, ...] = ("StudyID", "DaysFromBaselineScan")


def unknown_interval_patients(cohort: Cohort) -> tuple[str, ...]:
    """PatientIDs with more than one study and at least one unknown (NaN) interval."""
    return tuple(
        p.patient_id
        for p in cohort.patients
        if len(p.studies) > 1 and any(math.isnan(s.days_from_baseline) for s in p.studies)
    )


def apply_intervals(cohort: Cohort, table: str | Path) -> Cohort:
    """Set each study's days from baseline from a CSV table the user gives.

    The table has the columns ``StudyID, DaysFromBaselineScan`` (one row per study;
    studies not listed keep what the layout gave). Each patient's studies are then
    ordered by those days, and their ``relative_timepoint`` renumbered 1, 2, ...

    Args:
        cohort: The cohort read from any layout.
        table: Path of the CSV file.

    Returns:
        A new cohort with the days set.

    Raises:
        DatasetError: The file is missing or unreadable, a column is missing, a
            StudyID is not in the cohort, or a value is not a finite number >= 0
            (the message names the file, the line and the fix).
    """
    import pandas as pd

    path = Path(table)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the intervals table ({exc})") from None
    missing = [c for c in INTERVAL_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; an intervals table needs "
            f"{', '.join(INTERVAL_COLUMNS)}"
        )
    known = {s.study_id for s in cohort.studies}
    days: dict[str, float] = {}
    for i, row in enumerate(df.itertuples(index=False), start=2):
        sid = str(row.StudyID).strip()
        if sid not in known:
            raise DatasetError(
                f"{path}: line {i}: StudyID {sid!r} is not in the dataset; "
                + did_you_mean(sid, sorted(known))
            )
        try:
            d = float(row.DaysFromBaselineScan)
        except ValueError:
            d = math.nan
        if not math.isfinite(d) or d < 0:
            raise DatasetError(
                f"{path}: line {i}, column 'DaysFromBaselineScan': expected a number >= 0, "
                f"found {row.DaysFromBaselineScan!r}"
            )
        days[sid] = d
    patients = []
    for p in cohort.patients:
        studies = [
            replace(s, days_from_baseline=days.get(s.study_id, s.days_from_baseline))
            for s in p.studies
        ]
        if not any(math.isnan(s.days_from_baseline) for s in studies):
            studies.sort(key=lambda s: (s.days_from_baseline, s.relative_timepoint))
        studies = [replace(s, relative_timepoint=k) for k, s in enumerate(studies, start=1)]
        patients.append(replace(p, studies=tuple(studies)))
    return replace(cohort, patients=tuple(patients))
