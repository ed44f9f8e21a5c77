"""The private pseudonym mapping of an ingest: original identifiers to pseudonyms.

``metstrack ingest`` replaces every PatientID and StudyInstanceUID by a
pseudonym (``P0001``, ``S00001``) and keeps the link in a JSON file that only
its owner can read (mode 0600 from the first byte). Export back to DICOM reads
it to find the source series (:func:`source_series_uid`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from metstrack.core.atomic import (
    atomic_path,
)
from metstrack.errors import (
    DatasetError,
    did_you_mean,
)
from metstrack.io.dicom import DicomSeriesInfo

MAPPING_VERSION = 1


def default_mapping_path(out: str | Path) -> Path:
    """``<out>-pseudonyms.json`` beside ``out`` (outside the shareable dataset)."""
    out = Path(out)
    return out.parent / f"{out.name}-pseudonyms.json"


def load_mapping(path: Path) -> dict:
    """The mapping at ``path``, or an empty one when the file does not exist yet."""
    if not path.exists():
        return {"version": MAPPING_VERSION, "patients": {}, "studies": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: pseudonym mapping is unreadable ({exc})") from exc
    if not isinstance(data, dict) or "patients" not in data or "studies" not in data:
        raise DatasetError(f"{path}: not a metstrack pseudonym mapping (no patients/studies)")
    return data


def read_mapping(path: str | Path) -> dict:
    """Read the private pseudonym mapping written by :func:`ingest_dicom`.

    Returns:
        ``{"patients": {original PatientID: pseudonym}, "studies": {original
        StudyInstanceUID: {"study_id", "patient_id", "study_date", "series": {SEQ: uid}}}}``.

    Raises:
        DatasetError: Missing, unreadable or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: pseudonym mapping not found; give the mapping `metstrack ingest` wrote "
            "(default <out>-pseudonyms.json beside the dataset)"
        )
    return load_mapping(path)


def save_mapping(path: Path, mapping: dict) -> None:
    """Write the mapping atomically, readable by its owner only."""
    # private from the first byte: the mapping links pseudonyms to real identifiers
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(json.dumps(mapping, indent=2) + "\n", encoding="utf-8")


def study_date(series: list[DicomSeriesInfo]) -> str:
    """The first valid YYYYMMDD StudyDate/SeriesDate of a study's series, else ``""``."""
    for s in series:
        if len(s.study_date) >= 8 and s.study_date[:8].isdigit():
            return s.study_date[:8]
    return ""


def assign_pseudonyms(
    by_study: dict[str, list[DicomSeriesInfo]],
    mapping: dict,
    *,
    patient_prefix: str,
    study_prefix: str,
) -> list[str]:
    """Fill ``mapping`` for new studies (in date order); return notes on missing IDs and dates."""
    notes = []
    keys = {}
    for uid, series in by_study.items():
        pid = next((s.patient_key for s in series if s.patient_key), "")
        if not pid:
            pid = f"study:{uid}"
            notes.append(
                f"{series[0].where}: no PatientID; the study is treated as its own patient"
            )
        date = study_date(series)
        if not date:
            notes.append(
                f"{series[0].where}: no StudyDate/SeriesDate; DaysFromBaselineScan left empty"
            )
        keys[uid] = (pid, date, uid)
    patients = mapping["patients"]
    studies = mapping["studies"]
    for uid, (pid, date, _) in sorted(keys.items(), key=lambda kv: kv[1]):
        if pid not in patients:
            patients[pid] = f"{patient_prefix}{len(patients) + 1:04d}"
        if uid not in studies:
            studies[uid] = {
                "study_id": f"{study_prefix}{len(studies) + 1:05d}",
                "patient_id": patients[pid],
                "study_date": date,
                "series": {},
            }
    return notes


def source_series_uid(mapping_path: str | Path, study_id: str, sequence: str = "CT1") -> str:
    """The SeriesInstanceUID an ingested sequence came from (read from the private mapping).

    Use it to export predictions back onto the source series
    (``metstrack export-rtstruct --series <export> --study <S> --mapping <file>``).

    Args:
        mapping_path: The pseudonym mapping file written by :func:`ingest_dicom`.
        study_id: Study pseudonym.
        sequence: One of :data:`~metstrack.types.SEQUENCES` written for that study.

    Raises:
        DatasetError: Unknown study or sequence (with the valid ones).
    """
    mapping = load_mapping(Path(mapping_path))
    for entry in mapping["studies"].values():
        if entry["study_id"] == study_id:
            series = entry.get("series", {})
            if sequence not in series:
                raise DatasetError(
                    f"{mapping_path}: study {study_id} has no ingested {sequence}; "
                    + did_you_mean(sequence, series)
                )
            return str(series[sequence])
    ids = [e["study_id"] for e in mapping["studies"].values()]
    raise DatasetError(
        f"{mapping_path}: unknown study {study_id!r}; " + did_you_mean(study_id, ids)
    )
