"""Any input a user has -> a preprocessed release dataset that prediction reads.

``prepare_input(data, work)`` accepts:

* a ``metstrack preprocess`` output (it has ``transforms/``): used as it is;
* a dataset in any layout :func:`metstrack.io.layouts.read_dataset` reads
  (release, BraTS-METS case files or folders, BIDS, BrainMetShare, one study
  folder of NIfTI sequences): preprocessed into ``<work>/preprocessed``
  (registration, 1 mm grid, brain mask, z-score), except a release dataset,
  which is predicted as it is unless ``preprocess="always"``;
* a DICOM folder (any structure): ingested first with the DICOM reader
  (:func:`metstrack.io.ingest.ingest_dicom`, into ``<work>/ingested``), then
  preprocessed.

No table is needed from the user. Studies of layouts without dates (BraTS-METS
follow-ups ``...-000``, ``...-001``) keep their timepoint order with the interval
unknown, unless an intervals table (``StudyID, DaysFromBaselineScan``) is given.
The preprocessed copy stays in ``<work>`` so a rerun resumes instead of redoing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from metstrack.core import schema
from metstrack.core.mapping import TRANSFORMS_DIR
from metstrack.errors import ConfigError, DatasetError, did_you_mean
from metstrack.execution.executor import Executor
from metstrack.io.dicom import scan_dicom
from metstrack.io.ingest import IngestConfig, ingest_dicom
from metstrack.io.layouts import (
    LAYOUTS,
    apply_intervals,
    detect_layout,
    read_dataset,
    unknown_interval_patients,
)
from metstrack.preprocess.config import PreprocessConfig
from metstrack.preprocess.pipeline import preprocess_dataset
from metstrack.types import Cohort

log = logging.getLogger(__name__)

#: When the input is preprocessed on the way in.
PreprocessChoice = Literal["auto", "always", "never"]
PREPROCESS_CHOICES: tuple[str, ...] = get_args(PreprocessChoice)
#: Sub-folders of the work folder.
INGESTED_DIR = "ingested"
PREPROCESSED_DIR = "preprocessed"


@dataclass(frozen=True)
class PreparedInput:
    """What :func:`prepare_input` produced.

    Attributes:
        root: The release-layout dataset to predict (or evaluate against).
        cohort: Its cohort (intervals applied).
        source_layout: Layout of the user's input (``dicom`` for a DICOM folder).
        preprocessed: True when ``root`` is a ``metstrack preprocess`` output (it has
            ``transforms/``: outputs map back onto the original files' grids).
        unknown_intervals: PatientIDs whose intervals between studies are unknown.
    """

    root: Path
    cohort: Cohort
    source_layout: str
    preprocessed: bool
    unknown_intervals: tuple[str, ...]


def is_preprocessed(root: Path) -> bool:
    """True when ``root`` is a ``metstrack preprocess`` output."""
    return (root / TRANSFORMS_DIR).is_dir() and schema.table_path(
        root, schema.IMAGING_TABLE
    ).is_file()


def _has_dicom(root: Path) -> bool:
    return bool(scan_dicom(root).series)


def prepare_input(
    data: str | Path,
    work: str | Path,
    *,
    layout: str = "auto",
    intervals: str | Path | None = None,
    preprocess: str = "auto",
    brain_method: str = "auto",
    spacing_mm: float = 1.0,
    workers: int = 1,
    on_start: Callable[[int], None] | None = None,
    on_study: Callable[[object], None] | None = None,
    executor: Executor | None = None,
) -> PreparedInput:
    """Make ``data`` ready for prediction (see the module docstring).

    Args:
        data: The user's input folder.
        work: Folder for the ingested and preprocessed copies (created when needed).
        layout: Input layout name or ``auto`` (``dicom`` forces the DICOM reader).
        intervals: Optional CSV of ``StudyID, DaysFromBaselineScan``.
        preprocess: ``auto`` (every input but a release dataset or a preprocess
            output), ``always`` or ``never``.
        brain_method: Brain-mask method of preprocessing
            (:data:`metstrack.preprocess.brain.BRAIN_METHODS`).
        spacing_mm: Isotropic voxel size of the preprocessed grid (the model's
            training spacing).
        workers: Preprocessing worker processes.
        on_start: Progress callback: number of studies to preprocess.
        on_study: Progress callback: one preprocessed study.
        executor: Where preprocessing runs (``None``: ``workers`` local processes).

    Returns:
        A :class:`PreparedInput`.

    Raises:
        ConfigError: Unknown ``preprocess`` or ``layout`` value.
        DatasetError: No known layout and no DICOM series in ``data``, or a
            preprocessing failure (the first failed study named).
    """
    data, work = Path(data), Path(work)
    if preprocess not in PREPROCESS_CHOICES:
        raise ConfigError(
            f"preprocess: {preprocess!r}; " + did_you_mean(preprocess, PREPROCESS_CHOICES)
        )
    if layout not in (*LAYOUTS, "auto", "dicom"):
        raise ConfigError(
            f"unknown input layout {layout!r}; " + did_you_mean(layout, [*LAYOUTS, "auto", "dicom"])
        )
    if not data.is_dir():
        raise DatasetError(f"{data}: input folder not found")
    if is_preprocessed(data) and layout in ("auto", "release"):
        cohort = read_dataset(data, "release")
        if intervals is not None:
            cohort = apply_intervals(cohort, intervals)
        return PreparedInput(data, cohort, "release", True, unknown_interval_patients(cohort))
    source, source_layout = data, layout
    if layout == "dicom" or (layout == "auto" and not _any_layout(data)):
        if not _has_dicom(data):
            detect_layout(data)  # raises the message listing every layout

        source = work / INGESTED_DIR
        ingest_dicom(data, source, config=IngestConfig(), mapping_path=work / "pseudonyms.json")
        source_layout = "dicom"
    cohort = read_dataset(source, "auto" if source_layout == "dicom" else layout)
    if source_layout == "auto":
        source_layout = cohort.layout
    run_preprocess = preprocess == "always" or (
        preprocess == "auto" and (source_layout == "dicom" or cohort.layout != "release")
    )
    if not run_preprocess:
        if intervals is not None:
            cohort = apply_intervals(cohort, intervals)
        return PreparedInput(
            source, cohort, source_layout, False, unknown_interval_patients(cohort)
        )
    out = work / PREPROCESSED_DIR
    cfg = PreprocessConfig(brain_method=brain_method, spacing_mm=spacing_mm)
    report = preprocess_dataset(
        source,
        out,
        cfg,
        workers,
        layout=cohort.layout,
        intervals=intervals,
        on_start=on_start,
        on_study=on_study,
        executor=executor,
    )
    if report.failed:
        first = report.failed[0]
        raise DatasetError(
            f"preprocessing {len(report.failed)} of {len(report.outcomes)} studies failed; "
            f"first: {first.patient_id}/{first.study_id}: {first.message}"
        )
    done = read_dataset(out, "release")
    return PreparedInput(out, done, source_layout, True, unknown_interval_patients(done))


def _any_layout(root: Path) -> bool:
    return any(lay.detect(root) for lay in LAYOUTS.values())
