"""The split and clinical tables of the release layout (``split.csv``, ``clinical_*.csv``,
``radiosurgery_targets.csv``), checked against the imaging table's patients and studies.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pandas as pd

from metstrack.core import schema
from metstrack.errors import did_you_mean
from metstrack.io.table_cells import (
    AlreadyReportedError,
    BadCellError,
    Findings,
    ImagingRow,
    cell_value,
    flag_cell,
    integer_cell,
    load_csv,
    number_cell,
    optional_number_cell,
    parse_rows,
    text_cell,
)
from metstrack.types import (
    VISIT_CLASSES,
    ClinicalEvent,
    ClinicalPatient,
    RadiosurgeryTarget,
    Study,
)

log = logging.getLogger(__name__)

#: Split columns of the split table, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("PatientID", "visit_class", "days_from_first_srs")
REQUIRED_PATIENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in schema.PATIENT_COLUMNS if c != "first_srs_days_from_baseline_scan"
)
REQUIRED_TARGET_COLUMNS: tuple[str, ...] = schema.TARGET_COLUMNS


def with_split(study: Study, splits: dict[str, str]) -> Study:
    """The study with its split from ``splits`` (StudyID -> train/val/test), if any."""
    return replace(study, split=splits.get(study.study_id))


def read_split(root: Path, studies: dict[str, ImagingRow], found: Findings) -> dict[str, str]:
    """StudyID -> split from ``split.csv`` (empty when the table is absent); checks that
    splits are by patient and every listed study is in exactly one split."""
    path = schema.table_path(root, schema.SPLIT_TABLE)
    if not path.is_file():
        log.info("%s: no split table; studies are unsplit", path)
        return {}
    df = load_csv(path, schema.SPLIT_COLUMNS, found)
    if df is None:
        return {}

    def parse(row: pd.Series):
        sid = text_cell(row, "StudyID")
        if sid in found.failed_studies:
            raise AlreadyReportedError
        on = [c for c in SPLITS if flag_cell(row, c)]
        if len(on) != 1:
            what = "no split (train, val, test all 0)" if not on else f"{len(on)} splits"
            raise BadCellError(
                "/".join(on) if on else "train/val/test",
                f"study {sid!r} is in {what}; exactly one of train, val, test must be 1",
            )
        return sid, on[0]

    split_of: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for line, (sid, name) in parse_rows(path, df, parse, found, check="split"):
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


def read_clinical_patients(
    root: Path, known: set[str], found: Findings
) -> tuple[ClinicalPatient, ...]:
    """One record per row of ``clinical_patients.csv`` naming a known patient."""
    path = schema.table_path(root, schema.PATIENTS_TABLE)
    if not path.is_file():
        return ()
    df = load_csv(path, REQUIRED_PATIENT_COLUMNS, found)
    if df is None:
        return ()
    has_first = "first_srs_days_from_baseline_scan" in df.columns

    def parse(row: pd.Series):
        pid = known_patient(row, known, found)
        return ClinicalPatient(
            patient_id=pid,
            age_years=number_cell(row, "age_years", lo=0, hi=130),
            sex=text_cell(row, "sex"),
            primary_histology=text_cell(row, "primary_histology"),
            kps=number_cell(row, "kps", lo=0, hi=100),
            extracranial_disease=flag_cell(row, "extracranial_disease"),
            death=flag_cell(row, "death"),
            days_to_death_or_followup=number_cell(row, "days_to_death_or_followup", lo=0),
            first_srs_days_from_baseline_scan=(
                number_cell(row, "first_srs_days_from_baseline_scan") if has_first else 0.0
            ),
        )

    out: list[ClinicalPatient] = []
    seen: dict[str, int] = {}
    for line, rec in parse_rows(path, df, parse, found):
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


def known_patient(row: pd.Series, known: set[str], found: Findings) -> str:
    """The row's PatientID when it names a known patient.

    Raises:
        BadCellError: An unknown patient.
        AlreadyReportedError: A patient whose imaging row was already reported.
    """
    pid = text_cell(row, "PatientID")
    if pid not in known and pid in found.failed_patients:
        raise AlreadyReportedError
    if pid not in known:
        raise BadCellError(
            "PatientID",
            f"unknown patient {pid!r} (not in {schema.IMAGING_TABLE}); "
            + did_you_mean(pid, sorted(known)[:200]),
        )
    return pid


def known_study(
    row: pd.Series,
    pid: str,
    study_patient: dict[str, str] | None,
    found: Findings,
    *,
    required: bool,
) -> str | None:
    """The row's StudyID when it names a study of its patient (kept as written without
    an imaging table)."""
    sid = cell_value(row, "StudyID")
    if not sid:
        if required:
            raise BadCellError("StudyID", "empty value; every row needs one")
        return None
    if study_patient is None:  # clinical-only dataset: nothing to check against
        return sid
    if sid not in study_patient and sid in found.failed_studies:
        raise AlreadyReportedError
    if sid not in study_patient:
        raise BadCellError("StudyID", f"unknown study {sid!r} (not in {schema.IMAGING_TABLE})")
    if study_patient[sid] != pid:
        raise BadCellError(
            "StudyID", f"study {sid!r} belongs to another patient in {schema.IMAGING_TABLE}"
        )
    return sid


def read_events(
    root: Path, known: set[str], study_patient: dict[str, str] | None, found: Findings
) -> tuple[ClinicalEvent, ...]:
    """One event per row of ``clinical_events.csv`` (``visit_class`` checked)."""
    path = schema.table_path(root, schema.EVENTS_TABLE)
    if not path.is_file():
        return ()
    df = load_csv(path, REQUIRED_EVENT_COLUMNS, found)
    if df is None:
        return ()

    def parse(row: pd.Series):
        pid = known_patient(row, known, found)
        vc = integer_cell(row, "visit_class")
        if vc not in VISIT_CLASSES:
            codes = ", ".join(f"{k} {v}" for k, v in VISIT_CLASSES.items())
            raise BadCellError("visit_class", f"unknown visit_class {vc}; valid: {codes}")
        return ClinicalEvent(
            patient_id=pid,
            visit_class=vc,
            days_from_first_srs=number_cell(row, "days_from_first_srs"),
            study_id=known_study(row, pid, study_patient, found, required=False),
            description=cell_value(row, "description"),
        )

    return tuple(rec for _, rec in parse_rows(path, df, parse, found))  # type: ignore[misc]


def read_targets(
    root: Path, known: set[str], study_patient: dict[str, str] | None, found: Findings
) -> tuple[RadiosurgeryTarget, ...]:
    """One radiosurgery target per row of ``radiosurgery_targets.csv``."""
    path = schema.table_path(root, schema.TARGETS_TABLE)
    if not path.is_file():
        return ()
    df = load_csv(path, REQUIRED_TARGET_COLUMNS, found)
    if df is None:
        return ()

    def parse(row: pd.Series):
        pid = known_patient(row, known, found)
        return RadiosurgeryTarget(
            patient_id=pid,
            target_id=integer_cell(row, "target_id"),
            study_id=known_study(row, pid, study_patient, found, required=True) or "",
            days_from_first_srs=number_cell(row, "days_from_first_srs"),
            target_volume_mm3=number_cell(row, "target_volume_mm3", lo=0),
            dose_gy=number_cell(row, "dose_gy", lo=0),
            centroid_mm=(  # empty when the planning contour's position is unknown
                optional_number_cell(row, "centroid_x_mm"),
                optional_number_cell(row, "centroid_y_mm"),
                optional_number_cell(row, "centroid_z_mm"),
            ),
        )

    out: list[RadiosurgeryTarget] = []
    seen: dict[tuple[str, int], int] = {}
    for line, rec in parse_rows(path, df, parse, found):
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
