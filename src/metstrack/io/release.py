"""Reader for the NYUMets-Brain release layout (see :mod:`metstrack.core.schema`).

::

    <root>/imaging/patientId/<PatientID>/studyId/<StudyID>/<SEQ>.nii[.gz]
    <root>/tables/imaging.csv   (required)
    <root>/tables/split.csv, clinical_events.csv, clinical_patients.csv,
    <root>/tables/radiosurgery_targets.csv   (optional)

:func:`read_release` returns a :class:`~metstrack.types.Cohort`: patients
sorted by ID, each with studies in time order (``DaysFromBaselineScan``, then
``RelativeTimepoint``), one :class:`~metstrack.types.Series` per file present.

Two kinds of findings:

* **Table errors** (a CSV that cannot be parsed, a missing required column, an
  unparsable number, an unknown ``visit_class``, a duplicate StudyID, a clinical
  row naming an unknown patient or study, a split that puts a patient in two
  splits or a study in none or two) make the tables untrustworthy:
  :func:`read_release` always raises :class:`~metstrack.errors.DatasetError`
  naming the file, the 1-based line and the column.
* **Recorded problems** (a sequence flagged 1 without its file, a file whose
  flag is 0, a missing modality, a study folder absent from the table,
  timepoints out of order) are kept as :class:`~metstrack.io.problems.Problem`
  records for ``metstrack validate``; the reader logs them and carries on,
  unless ``strict=True``.

:func:`scan_release` returns both lists and the cohort built from every good
row, which is what the validator uses.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from metstrack.core import schema
from metstrack.errors import DatasetError, did_you_mean
from metstrack.io.nifti import NIFTI_SUFFIXES, find_nifti, is_nifti
from metstrack.io.problems import (
    ERROR,
    WARNING,
    DatasetScan,
    cohort_or_raise,
    dataset_error,
)
from metstrack.io.release_clinical import (
    read_clinical_patients,
    read_events,
    read_split,
    read_targets,
    with_split,
)
from metstrack.io.table_cells import (
    Findings,
    ImagingRow,
    cell_value,
    flag_cell,
    integer_cell,
    load_csv,
    optional_number_cell,
    parse_rows,
    text_cell,
)
from metstrack.types import (
    LABEL_SEQUENCE,
    MODALITIES,
    PLANNING_SEQUENCE,
    SEQUENCES,
    ClinicalEvent,
    ClinicalPatient,
    Cohort,
    Patient,
    RadiosurgeryTarget,
    Series,
    Study,
)

log = logging.getLogger(__name__)

#: Name of this layout in :class:`~metstrack.types.Cohort` and ``read_dataset``.
LAYOUT = "release"

#: Imaging-table columns that may be absent (absent flag columns are inferred from the files).
OPTIONAL_IMAGING_COLUMNS: tuple[str, ...] = (PLANNING_SEQUENCE, "ExpertAdjusted")
REQUIRED_IMAGING_COLUMNS: tuple[str, ...] = tuple(
    c for c in schema.IMAGING_COLUMNS if c not in OPTIONAL_IMAGING_COLUMNS
)

#: Checks of recorded problems that ``strict=True`` turns into a DatasetError.
STRICT_CHECKS: frozenset[str] = frozenset({"table-vs-files", "unlisted-study", "timepoints"})


def read_release(root: str | Path, *, strict: bool = False) -> Cohort:
    """Read a dataset in the NYUMets-Brain release layout.

    Args:
        root: Dataset folder holding ``imaging/`` and ``tables/``.
        strict: Also raise on recorded table-versus-files problems (a flag of 1
            without its file, a file whose flag is 0, a study folder missing
            from the imaging table, timepoints out of order). Missing
            modalities (flag 0, no file) are never fatal.

    Returns:
        The cohort, ``layout="release"``.

    Raises:
        DatasetError: ``root`` or ``tables/imaging.csv`` is missing, or any table
            error (the message names the file, the 1-based line and the column,
            and counts the others; ``metstrack validate`` lists them all).
    """
    scan = scan_release(root)
    return cohort_or_raise(scan, root, strict=strict, strict_checks=STRICT_CHECKS)


def read_clinical_tables(
    root: str | Path,
) -> tuple[tuple[ClinicalPatient, ...], tuple[ClinicalEvent, ...], tuple[RadiosurgeryTarget, ...]]:
    """Read only the clinical tables of a dataset (a clinical-only cohort has no imaging).

    Patients are known from ``clinical_patients.csv`` itself; StudyIDs in the
    event and target tables are kept as written (no imaging table to check
    them against). Use :func:`read_release` when the imaging table exists.

    Args:
        root: Dataset folder holding ``tables/clinical_patients.csv``.

    Returns:
        ``(patients, events, targets)``.

    Raises:
        DatasetError: The patient table is missing, or any bad row (file, line, column).
    """
    root = Path(root)
    path = schema.table_path(root, schema.PATIENTS_TABLE)
    if not path.is_file():
        raise DatasetError(f"{path}: clinical patient table not found")
    found = Findings()
    df = load_csv(path, ("PatientID",), found)
    known = set() if df is None else {str(v) for v in df["PatientID"]}
    patients = read_clinical_patients(root, known, found)
    events = read_events(root, known, None, found)
    targets = read_targets(root, known, None, found)
    if found.table:
        raise dataset_error(found.table, root)
    return patients, events, targets


def scan_release(root: str | Path) -> DatasetScan:
    """Read a release-layout dataset and collect every problem instead of stopping.

    Args:
        root: Dataset folder.

    Returns:
        A :class:`~metstrack.io.problems.DatasetScan`.

    Raises:
        DatasetError: ``root`` is not a folder or has no ``tables/imaging.csv``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    imaging_csv = schema.table_path(root, schema.IMAGING_TABLE)
    if not imaging_csv.is_file():
        raise DatasetError(
            f"{imaging_csv}: imaging table not found; a release-layout dataset needs "
            f"{schema.TABLES_DIR}/{schema.IMAGING_TABLE} (see docs/datasets.md)"
        )
    found = Findings()
    studies = _read_imaging(root, imaging_csv, found)
    if studies is None:
        return DatasetScan(None, tuple(found.table), tuple(found.recorded))
    _check_unlisted_folders(root, studies, found)
    splits = read_split(root, studies, found)
    by_patient: dict[str, list[Study]] = defaultdict(list)
    for row in studies.values():
        by_patient[row.study.patient_id].append(row.study)
    patients = []
    for pid in sorted(by_patient):
        ordered = _order_studies(pid, by_patient[pid], studies, imaging_csv, found)
        split = splits.get(ordered[0].study_id) if splits else None
        ordered = tuple(with_split(s, splits) for s in ordered)
        patients.append(Patient(patient_id=pid, studies=ordered, split=split))
    known_patients = set(by_patient)
    study_patient = {sid: row.study.patient_id for sid, row in studies.items()}
    clin_patients = read_clinical_patients(root, known_patients, found)
    events = read_events(root, known_patients, study_patient, found)
    targets = read_targets(root, known_patients, study_patient, found)
    cohort = Cohort(
        root=root,
        patients=tuple(patients),
        clinical_patients=clin_patients,
        clinical_events=events,
        radiosurgery_targets=targets,
        layout=LAYOUT,
    )
    return DatasetScan(cohort, tuple(found.table), tuple(found.recorded))


# --------------------------------------------------------------------------- internals


def _read_imaging(root: Path, path: Path, found: Findings) -> dict[str, ImagingRow] | None:
    df = load_csv(path, REQUIRED_IMAGING_COLUMNS, found)
    if df is None:
        return None
    flag_columns = [c for c in SEQUENCES if c in df.columns]

    def parse(row: pd.Series):
        pid = text_cell(row, "PatientID")
        sid = text_cell(row, "StudyID")
        flags = {c: flag_cell(row, c) for c in flag_columns}
        expert = flag_cell(row, "ExpertAdjusted") if "ExpertAdjusted" in df.columns else False
        # Empty: the interval is unknown (e.g. BraTS names carry no dates); the
        # studies are then ordered by RelativeTimepoint alone.
        days = optional_number_cell(row, "DaysFromBaselineScan")
        rt = integer_cell(row, "RelativeTimepoint", lo=0)
        return pid, sid, flags, expert, days, rt

    def remember(row: pd.Series) -> None:
        found.failed_studies.add(cell_value(row, "StudyID"))
        found.failed_patients.add(cell_value(row, "PatientID"))

    studies: dict[str, ImagingRow] = {}
    parsed = parse_rows(path, df, parse, found, on_fail=remember)
    for line, (pid, sid, flags, expert, days, rt) in parsed:
        if sid in studies:
            found.table_error(
                path,
                f"line {line}, column 'StudyID': duplicate StudyID {sid!r} "
                f"(first on line {studies[sid].line}); each study needs exactly one row",
            )
            continue
        folder = schema.study_dir(root, pid, sid)
        series = _study_series(folder, flags, line, found)
        # An absent flag column says nothing: the file's presence decides.
        flagged = tuple(s for s in SEQUENCES if flags.get(s, any(x.sequence == s for x in series)))
        study = Study(
            study_id=sid,
            patient_id=pid,
            days_from_baseline=days,
            relative_timepoint=rt,
            series=series,
            sequences_flagged=flagged,
            labelled=flags.get(LABEL_SEQUENCE, False),
            expert_adjusted=expert,
            truth_label=_truth_label(root, pid, sid),
        )
        studies[sid] = ImagingRow(study=study, line=line, flags=flags)
    return studies


def _truth_label(root: Path, pid: str, sid: str) -> Path | None:
    """The synthetic ground truth's label of a study (``.nii.gz`` or ``.nii``), or ``None``."""
    path = schema.truth_label_path(root, pid, sid)
    return find_nifti(path.parent, sid) if path.parent.is_dir() else None


def _study_series(
    folder: Path, flags: dict[str, bool], line: int, found: Findings
) -> tuple[Series, ...]:
    table = schema.IMAGING_TABLE
    if not folder.is_dir():
        wanted = [s for s, f in flags.items() if f]
        if wanted:
            found.record(
                ERROR,
                folder,
                "table-vs-files",
                f"study folder does not exist but {table} line {line} flags "
                f"{', '.join(wanted)} as available; add the files or fix the table",
            )
        return ()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    by_seq: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        if not is_nifti(p):
            continue
        stem = _nifti_stem(p.name)
        if stem in SEQUENCES:
            by_seq[stem].append(p)
        else:
            found.record(
                WARNING,
                p,
                "unknown-file",
                f"NIfTI file {p.name!r} is not a release sequence and is ignored; "
                + did_you_mean(stem, SEQUENCES),
            )
    series = []
    for seq in SEQUENCES:
        paths = sorted(by_seq.get(seq, []), key=lambda p: not p.name.endswith(".gz"))
        if len(paths) > 1:
            found.record(
                WARNING,
                paths[0],
                "duplicate-file",
                f"both {paths[0].name} and {paths[1].name} exist; using {paths[0].name}, "
                "remove the other",
            )
        has_file = bool(paths)
        if has_file:
            series.append(Series(sequence=seq, path=paths[0]))
        flag = flags.get(seq)
        expected = folder / f"{seq}.nii.gz"
        if flag and not has_file:
            found.record(
                ERROR,
                expected,
                "table-vs-files",
                f"{table} line {line} flags {seq}=1 but neither {seq}.nii.gz nor {seq}.nii "
                "exists; add the file or set the flag to 0",
            )
        elif flag is False and has_file:
            found.record(
                WARNING,
                paths[0],
                "table-vs-files",
                f"file exists but {table} line {line} flags {seq}=0; set the flag to 1 "
                "if the file is valid, or remove it",
            )
        elif not has_file and seq in MODALITIES:
            found.record(
                WARNING,
                expected,
                "missing-sequence",
                f"study has no {seq} ({table} line {line} flags it 0); "
                "models that need every modality will skip or impute it",
            )
    return tuple(series)


def _nifti_stem(name: str) -> str:
    for sfx in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return name


def _check_unlisted_folders(root: Path, studies: dict[str, ImagingRow], found: Findings) -> None:
    """Record study folders on disk that the imaging table does not list."""
    base = root / schema.IMAGING_DIR / "patientId"
    if not base.is_dir():
        # A clinical-only table (every sequence flag 0) needs no imaging folder.
        flagged = sum(any(r.flags.values()) for r in studies.values())
        if flagged:
            found.record(
                ERROR,
                base,
                "table-vs-files",
                f"imaging folder not found although {schema.IMAGING_TABLE} flags files for "
                f"{flagged} studies; expected "
                "imaging/patientId/<PatientID>/studyId/<StudyID>/",
            )
        return
    listed = {(r.study.patient_id, sid) for sid, r in studies.items()}
    for pdir in sorted(p for p in base.iterdir() if p.is_dir()):
        sroot = pdir / "studyId"
        if not sroot.is_dir():
            found.record(
                WARNING,
                pdir,
                "layout",
                "patient folder has no studyId/ subfolder; expected "
                "patientId/<PatientID>/studyId/<StudyID>/",
            )
            continue
        for sdir in sorted(s for s in sroot.iterdir() if s.is_dir()):
            if (pdir.name, sdir.name) in listed or sdir.name in found.failed_studies:
                continue
            other = studies.get(sdir.name)
            where = (
                f"; the table lists StudyID {sdir.name!r} under another patient"
                if other is not None
                else ""
            )
            found.record(
                ERROR,
                sdir,
                "unlisted-study",
                f"study folder is not listed in {schema.IMAGING_TABLE}{where}; "
                "add a row for it or remove the folder",
            )


def _order_studies(
    pid: str, studies: list[Study], rows: dict[str, ImagingRow], path: Path, found: Findings
) -> tuple[Study, ...]:
    if any(math.isnan(s.days_from_baseline) for s in studies):
        ordered = sorted(studies, key=lambda s: s.relative_timepoint)
    else:
        ordered = sorted(studies, key=lambda s: (s.days_from_baseline, s.relative_timepoint))
    rts = [s.relative_timepoint for s in ordered]
    lines = ", ".join(str(rows[s.study_id].line) for s in ordered)
    if len(set(rts)) != len(rts):
        found.record(
            ERROR,
            path,
            "timepoints",
            f"patient {pid!r} has repeated RelativeTimepoint values {rts} (lines {lines}); "
            "each study needs its own rank",
        )
    elif rts != sorted(rts):
        found.record(
            ERROR,
            path,
            "timepoints",
            f"patient {pid!r}: DaysFromBaselineScan and RelativeTimepoint disagree on the "
            f"order of studies (RelativeTimepoint {rts} in day order; lines {lines}); "
            "fix the days or the ranks",
        )
    first_days = ordered[0].days_from_baseline if ordered else 0.0
    if not math.isnan(first_days) and first_days != 0:
        found.record(
            WARNING,
            path,
            "timepoints",
            f"patient {pid!r}: first study has DaysFromBaselineScan "
            f"{ordered[0].days_from_baseline:g}, expected 0 (days count from the first scan)",
        )
    return tuple(ordered)
