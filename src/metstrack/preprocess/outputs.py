"""Where preprocessing writes, and how a finished study is recognised.

Beside the release layout of the output dataset, preprocessing writes under
``preprocess/`` the per-study provenance (:func:`provenance_path`) and the brain
masks (:func:`brain_mask_path`, on the baseline grid and on the CT1 file's own
grid); a study is finished when its transform JSON exists (:func:`is_study_done`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from metstrack.core.mapping import (
    transform_path,
)
from metstrack.io.fingerprint import file_sha256
from metstrack.preprocess.config import (
    PREPROCESS_DIR,
)
from metstrack.types import (
    Study,
)


def study_fingerprint(study: Study) -> str:
    """SHA-256 over the study's input files (names and bytes), first 16 hex digits."""
    h = hashlib.sha256()
    for s in sorted(study.series, key=lambda s: s.sequence):
        h.update(s.sequence.encode())
        h.update(file_sha256(s.path).encode())
    if study.truth_label is not None:
        h.update(b"truth_label")
        h.update(file_sha256(study.truth_label).encode())
    return h.hexdigest()[:16]


def provenance_path(out_root: Path, patient_id: str, study_id: str) -> Path:
    """``<out>/preprocess/provenance/<PatientID>/<StudyID>.json``."""
    return Path(out_root) / PREPROCESS_DIR / "provenance" / patient_id / f"{study_id}.json"


def brain_mask_path(
    out_root: Path, patient_id: str, study_id: str, *, native: bool = False
) -> Path:
    """``<out>/preprocess/brain_masks/<PatientID>/<StudyID>.nii.gz`` (on the baseline grid),
    or with ``native`` ``<StudyID>.native.nii.gz`` (on the grid of the original CT1 file)."""
    name = f"{study_id}.native.nii.gz" if native else f"{study_id}.nii.gz"
    return Path(out_root) / PREPROCESS_DIR / "brain_masks" / patient_id / name


def is_study_done(out_root: Path, patient_id: str, study_id: str) -> bool:
    """True when the study's transform JSON (its last output) exists."""
    return transform_path(out_root, patient_id, study_id).is_file()


def recorded_outputs(out_root: Path, patient_id: str, study_id: str) -> tuple[str, ...]:
    """Outputs of a finished study, as listed in its provenance (for catalog resume)."""
    import json

    try:
        prov = json.loads(provenance_path(out_root, patient_id, study_id).read_text("utf-8"))
        return tuple(str(p) for p in prov.get("outputs", ()))
    except (OSError, ValueError):
        return ()
