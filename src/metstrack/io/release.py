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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from metstrack.core import schema
from metstrack.errors import DatasetError, did_you_mean
from metstrack.io.nifti import NIFTI_SUFFIXES, find_nifti, is_nifti
from metstrack.io.problems import (
    ERROR,
    WARNING,
    DatasetScan,
    Problem,
    cohort_or_raise,
    dataset_error,
)
from metstrack.types import (
    LABEL_SEQUENCE,
    MODALITIES,
    PLANNING_SEQUENCE,
    SEQUENCES,
    VISIT_CLASSES,
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
#: Split columns of the split table, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Imaging-table columns that may be absent (absent flag columns are inferred from the files).
OPTIONAL_IMAGING_COLUMNS: tuple[str, ...] = (PLANNING_SEQUENCE, "ExpertAdjusted")
REQUIRED_IMAGING_COLUMNS: tuple[str, ...] = tuple(
    c for c in schema.IMAGING_COLUMNS if c not in OPTIONAL_IMAGING_COLUMNS
)
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("PatientID", "visit_class", "days_from_first_srs")
REQUIRED_PATIENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in schema.PATIENT_COLUMNS if c != "first_srs_days_from_baseline_scan"
)
REQUIRED_TARGET_COLUMNS: tuple[str, ...] = schema.TARGET_COLUMNS

#: Checks of recorded problems that ``strict=True`` turns into a DatasetError.
STRICT_CHECKS: frozenset[str] = frozenset({"table-vs-files", "unlisted-study", "timepoints"})

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


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
    found = _Found()
    df = _load_csv(path, ("PatientID",), found)
    known = set() if df is None else {str(v) for v in df["PatientID"]}
    patients = _read_clinical_patients(root, known, found)
    events = _read_events(root, known, None, found)
    targets = _read_targets(root, known, None, found)
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
    found = _Found()
    studies = _read_imaging(root, imaging_csv, found)
    if studies is None:
        return DatasetScan(None, tuple(found.table), tuple(found.recorded))
    _check_unlisted_folders(root, studies, found)
    splits = _read_split(root, studies, found)
    by_patient: dict[str, list[Study]] = defaultdict(list)
    for row in studies.values():
        by_patient[row.study.patient_id].append(row.study)
    patients = []
    for pid in sorted(by_patient):
        ordered = _order_studies(pid, by_patient[pid], studies, imaging_csv, found)
        split = splits.get(ordered[0].study_id) if splits else None
        ordered = tuple(_with_split(s, splits) for s in ordered)
        patients.append(Patient(patient_id=pid, studies=ordered, split=split))
    known_patients = set(by_patient)
    study_patient = {sid: row.study.patient_id for sid, row in studies.items()}
    clin_patients = _read_clinical_patients(root, known_patients, found)
    events = _read_events(root, known_patients, study_patient, found)
    targets = _read_targets(root, known_patients, study_patient, found)
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


@dataclass
class _Found:
    """Accumulates table errors and recorded problems."""

    table: list[Problem] = field(default_factory=list)
    recorded: list[Problem] = field(default_factory=list)
    # IDs on imaging-table rows that failed to parse: later tables naming them
    # are not reported again as "unknown" (one root cause, one message).
    failed_studies: set[str] = field(default_factory=set)
    failed_patients: set[str] = field(default_factory=set)

    def table_error(self, file: Path, message: str, check: str = "table") -> None:
        self.table.append(Problem(ERROR, file, check, message))

    def record(self, severity: str, file: Path | None, check: str, message: str) -> None:
        self.recorded.append(Problem(severity, file, check, message))


@dataclass(frozen=True)
class _Row:
    """A parsed imaging-table row and where it came from."""

    study: Study
    line: int
    flags: dict[str, bool]


class _AlreadyReportedError(Exception):
    """A row that refers to an imaging row already reported as bad."""


class _BadCellError(Exception):
    """A cell that does not parse; carries the column and the reason."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def _load_csv(path: Path, required: Sequence[str], found: _Found) -> pd.DataFrame | None:
    """Read a CSV as strings with ``line`` = 1-based line of each row; None when unusable."""
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        found.table_error(path, f"cannot parse the CSV ({msg}); fix the file's format")
        return None
    except OSError as exc:
        found.table_error(path, f"cannot read the file ({exc.strerror or exc})")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = did_you_mean(missing[0], [c for c in df.columns if c not in required])
        found.table_error(
            path,
            f"missing required column(s) {', '.join(missing)}; "
            f"found columns {', '.join(df.columns)}; {hint}",
        )
        return None
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    df["__line__"] = df.index + 2  # header is line 1
    blank = (df.drop(columns="__line__") == "").all(axis=1)
    return df[~blank]


def _cell(row: pd.Series, column: str) -> str:
    v = row.get(column, "")
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


#: Placeholder words safe to quote back in messages.
_SAFE_WORDS = {"nan", "inf", "-inf", "na", "n/a", "none", "null", "true", "false", "yes", "no"}


def _shown(value: str) -> str:
    """Quote a bad cell only when it cannot be identifying text (no letters, or a placeholder).

    Free text (a name typed into a number column) is described, never repeated.
    """
    v = value.strip()
    if v.lower() in _SAFE_WORDS or not any(ch.isalpha() for ch in v):
        return repr(v if len(v) <= 24 else v[:21] + "...")
    return f"text of {len(v)} character(s) (not shown)"


def _text(row: pd.Series, column: str) -> str:
    v = _cell(row, column)
    if not v:
        raise _BadCellError(column, "empty value; every row needs one")
    return v


def _optional_number(row: pd.Series, column: str) -> float:
    """A number, or NaN for an empty cell (documented optional columns only)."""
    return math.nan if not _cell(row, column) else _number(row, column)


def _number(row: pd.Series, column: str, *, lo: float | None = None, hi: float | None = None):
    v = _cell(row, column)
    try:
        x = float(v)
    except ValueError:
        raise _BadCellError(column, f"expected a number, found {_shown(v)}") from None
    if not math.isfinite(x):
        raise _BadCellError(column, f"expected a finite number, found {_shown(v)}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise _BadCellError(column, f"value {x:g} is outside the valid range {rng}")
    return x


def _integer(row: pd.Series, column: str, *, lo: int | None = None) -> int:
    x = _number(row, column, lo=lo)
    if x != int(x):
        raise _BadCellError(column, f"expected an integer, found {_cell(row, column)!r}")
    return int(x)


def _flag(row: pd.Series, column: str) -> bool:
    v = _cell(row, column).lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _BadCellError(column, f"expected 0 or 1, found {_shown(_cell(row, column))}")


def _rows(
    path: Path,
    df: pd.DataFrame,
    parse: Callable[[pd.Series], object],
    found: _Found,
    *,
    check: str = "table",
    on_fail: Callable[[pd.Series], None] | None = None,
) -> list[tuple[int, object]]:
    """Apply ``parse`` to every row; bad cells become table errors naming line and column."""
    out = []
    for _, row in df.iterrows():
        line = int(row["__line__"])
        try:
            out.append((line, parse(row)))
        except _AlreadyReportedError:
            continue
        except _BadCellError as bad:
            found.table_error(path, f"line {line}, column {bad.column!r}: {bad.reason}", check)
            if on_fail is not None:
                on_fail(row)
    return out


def _read_imaging(root: Path, path: Path, found: _Found) -> dict[str, _Row] | None:
    df = _load_csv(path, REQUIRED_IMAGING_COLUMNS, found)
    if df is None:
        return None
    flag_columns = [c for c in SEQUENCES if c in df.columns]

    def parse(row: pd.Series):
        pid = _text(row, "PatientID")
        sid = _text(row, "StudyID")
        flags = {c: _flag(row, c) for c in flag_columns}
        expert = _flag(row, "ExpertAdjusted") if "ExpertAdjusted" in df.columns else False
        # Empty: the interval is unknown (e.g. BraTS names carry no dates); the
        # studies are then ordered by RelativeTimepoint alone.
        days = _optional_number(row, "DaysFromBaselineScan")
        rt = _integer(row, "RelativeTimepoint", lo=0)
        return pid, sid, flags, expert, days, rt

    def remember(row: pd.Series) -> None:
        found.failed_studies.add(_cell(row, "StudyID"))
        found.failed_patients.add(_cell(row, "PatientID"))

    studies: dict[str, _Row] = {}
    parsed = _rows(path, df, parse, found, on_fail=remember)
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
        studies[sid] = _Row(study=study, line=line, flags=flags)
    return studies


def _truth_label(root: Path, pid: str, sid: str) -> Path | None:
    """The synthetic ground truth's label of a study (``.nii.gz`` or ``.nii``), or ``None``."""
    path = schema.truth_label_path(root, pid, sid)
    return find_nifti(path.parent, sid) if path.parent.is_dir() else None


def _study_series(
    folder: Path, flags: dict[str, bool], line: int, found: _Found
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


def _check_unlisted_folders(root: Path, studies: dict[str, _Row], found: _Found) -> None:
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
    pid: str, studies: list[Study], rows: dict[str, _Row], path: Path, found: _Found
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


def _with_split(study: Study, splits: dict[str, str]) -> Study:
    return replace(study, split=splits.get(study.study_id))


def _read_split(root: Path, studies: dict[str, _Row], found: _Found) -> dict[str, str]:
    path = schema.table_path(root, schema.SPLIT_TABLE)
    if not path.is_file():
        log.info("%s: no split table; studies are unsplit", path)
        return {}
    df = _load_csv(path, schema.SPLIT_COLUMNS, found)
    if df is None:
        return {}

    def parse(row: pd.Series):
        sid = _text(row, "StudyID")
        if sid in found.failed_studies:
            raise _AlreadyReportedError
        on = [c for c in SPLITS if _flag(row, c)]
        if len(on) != 1:
            what = "no split (train, val, test all 0)" if not on else f"{len(on)} splits"
            raise _BadCellError(
                "/".join(on) if on else "train/val/test",
                f"study {sid!r} is in {what}; exactly one of train, val, test must be 1",
            )
        return sid, on[0]

    split_of: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for line, (sid, name) in _rows(path, df, parse, found, check="split"):
        if sid in split_of:
            found.table_error(
                path,
                f"line {line}, column 'StudyID': duplicate StudyID {sid!r} "
                f"(first on line {line_of[sid]})",
                check="split",
            )
            continue
        if sid not in studies:
            found.table_error(
                path,
                f"line {line}, column 'StudyID': unknown study {sid!r} (not in "
                f"{schema.IMAGING_TABLE}); " + did_you_mean(sid, list(studies)[:200]),
                check="split",
            )
            continue
        split_of[sid] = name
        line_of[sid] = line
    mentioned = set(df["StudyID"])
    for sid, row in studies.items():
        if sid not in mentioned:
            found.table_error(
                path,
                f"study {sid!r} ({schema.IMAGING_TABLE} line {row.line}) has no row; "
                "every study must be in exactly one split",
                check="split",
            )
    per_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for sid, name in split_of.items():
        per_patient[studies[sid].study.patient_id][name].append(sid)
    for pid in sorted(per_patient):
        parts = per_patient[pid]
        if len(parts) > 1:
            detail = "; ".join(
                f"{name}: {', '.join(sorted(sids))}" for name, sids in sorted(parts.items())
            )
            found.table_error(
                path,
                f"patient {pid!r} has studies in {len(parts)} splits ({detail}); "
                "splits must be by patient, move all of the patient's studies to one split",
                check="split",
            )
    return split_of


def _read_clinical_patients(
    root: Path, known: set[str], found: _Found
) -> tuple[ClinicalPatient, ...]:
    path = schema.table_path(root, schema.PATIENTS_TABLE)
    if not path.is_file():
        return ()
    df = _load_csv(path, REQUIRED_PATIENT_COLUMNS, found)
    if df is None:
        return ()
    has_first = "first_srs_days_from_baseline_scan" in df.columns

    def parse(row: pd.Series):
        pid = _known_patient(row, known, found)
        return ClinicalPatient(
            patient_id=pid,
            age_years=_number(row, "age_years", lo=0, hi=130),
            sex=_text(row, "sex"),
            primary_histology=_text(row, "primary_histology"),
            kps=_number(row, "kps", lo=0, hi=100),
            extracranial_disease=_flag(row, "extracranial_disease"),
            death=_flag(row, "death"),
            days_to_death_or_followup=_number(row, "days_to_death_or_followup", lo=0),
            first_srs_days_from_baseline_scan=(
                _number(row, "first_srs_days_from_baseline_scan") if has_first else 0.0
            ),
        )

    out: list[ClinicalPatient] = []
    seen: dict[str, int] = {}
    for line, rec in _rows(path, df, parse, found):
        assert isinstance(rec, ClinicalPatient)
        if rec.patient_id in seen:
            found.table_error(
                path,
                f"line {line}, column 'PatientID': duplicate PatientID {rec.patient_id!r} "
                f"(first on line {seen[rec.patient_id]}); one row per patient",
            )
            continue
        seen[rec.patient_id] = line
        out.append(rec)
    return tuple(sorted(out, key=lambda r: r.patient_id))


def _known_patient(row: pd.Series, known: set[str], found: _Found) -> str:
    pid = _text(row, "PatientID")
    if pid not in known and pid in found.failed_patients:
        raise _AlreadyReportedError
    if pid not in known:
        raise _BadCellError(
            "PatientID",
            f"unknown patient {pid!r} (not in {schema.IMAGING_TABLE}); "
            + did_you_mean(pid, sorted(known)[:200]),
        )
    return pid


def _known_study(
    row: pd.Series, pid: str, study_patient: dict[str, str] | None, found: _Found, *, required: bool
) -> str | None:
    sid = _cell(row, "StudyID")
    if not sid:
        if required:
            raise _BadCellError("StudyID", "empty value; every row needs one")
        return None
    if study_patient is None:  # clinical-only dataset: nothing to check against
        return sid
    if sid not in study_patient and sid in found.failed_studies:
        raise _AlreadyReportedError
    if sid not in study_patient:
        raise _BadCellError("StudyID", f"unknown study {sid!r} (not in {schema.IMAGING_TABLE})")
    if study_patient[sid] != pid:
        raise _BadCellError(
            "StudyID", f"study {sid!r} belongs to another patient in {schema.IMAGING_TABLE}"
        )
    return sid


def _read_events(
    root: Path, known: set[str], study_patient: dict[str, str] | None, found: _Found
) -> tuple[ClinicalEvent, ...]:
    path = schema.table_path(root, schema.EVENTS_TABLE)
    if not path.is_file():
        return ()
    df = _load_csv(path, REQUIRED_EVENT_COLUMNS, found)
    if df is None:
        return ()

    def parse(row: pd.Series):
        pid = _known_patient(row, known, found)
        vc = _integer(row, "visit_class")
        if vc not in VISIT_CLASSES:
            codes = ", ".join(f"{k} {v}" for k, v in VISIT_CLASSES.items())
            raise _BadCellError("visit_class", f"unknown visit_class {vc}; valid: {codes}")
        return ClinicalEvent(
            patient_id=pid,
            visit_class=vc,
            days_from_first_srs=_number(row, "days_from_first_srs"),
            study_id=_known_study(row, pid, study_patient, found, required=False),
            description=_cell(row, "description"),
        )

    return tuple(rec for _, rec in _rows(path, df, parse, found))  # type: ignore[misc]


def _read_targets(
    root: Path, known: set[str], study_patient: dict[str, str] | None, found: _Found
) -> tuple[RadiosurgeryTarget, ...]:
    path = schema.table_path(root, schema.TARGETS_TABLE)
    if not path.is_file():
        return ()
    df = _load_csv(path, REQUIRED_TARGET_COLUMNS, found)
    if df is None:
        return ()

    def parse(row: pd.Series):
        pid = _known_patient(row, known, found)
        return RadiosurgeryTarget(
            patient_id=pid,
            target_id=_integer(row, "target_id"),
            study_id=_known_study(row, pid, study_patient, found, required=True) or "",
            days_from_first_srs=_number(row, "days_from_first_srs"),
            target_volume_mm3=_number(row, "target_volume_mm3", lo=0),
            dose_gy=_number(row, "dose_gy", lo=0),
            centroid_mm=(  # empty when the planning contour's position is unknown
                _optional_number(row, "centroid_x_mm"),
                _optional_number(row, "centroid_y_mm"),
                _optional_number(row, "centroid_z_mm"),
            ),
        )

    out: list[RadiosurgeryTarget] = []
    seen: dict[tuple[str, int], int] = {}
    for line, rec in _rows(path, df, parse, found):
        assert isinstance(rec, RadiosurgeryTarget)
        key = (rec.patient_id, rec.target_id)
        if key in seen:
            found.table_error(
                path,
                f"line {line}, column 'target_id': duplicate target {rec.target_id} of "
                f"patient {rec.patient_id!r} (first on line {seen[key]})",
            )
            continue
        seen[key] = line
        out.append(rec)
    return tuple(out)
