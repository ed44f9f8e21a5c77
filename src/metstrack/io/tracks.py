"""The on-disk layout of a tracking run: where masks come from, tracked maps, transforms.

Read by the track workflow (:mod:`metstrack.workflows.track`), the DICOM export
of a tracking run (:mod:`metstrack.io.export_tracked`) and the report.

    tracked/patientId/<P>/studyId/<S>/tracked.nii.gz   int32 lesion IDs, baseline grid
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from metstrack.core import schema
from metstrack.core.mapping import TRANSFORMS_DIR, StudyTransform, load_transform
from metstrack.errors import DatasetError
from metstrack.io.nifti import find_nifti
from metstrack.types import Study

MaskKind = Literal["predictions", "labels", "ground-truth"]
#: Folder of the synthetic cohort's true instance maps: ``<root>/ground_truth/instances/<P>/<S>``.
GT_INSTANCES_DIR = "instances"
#: The synthetic cohort's true transforms table.
GT_TRANSFORMS = "transforms.csv"
TRACKED_DIR = "tracked"
TRACKED_MAP = "tracked"


@dataclass(frozen=True)
class MaskSource:
    """Where each study's lesion mask comes from.

    Attributes:
        kind: ``"predictions"`` (``<root>/predictions/patientId/<P>/studyId/<S>/mask.nii.gz``),
            ``"labels"`` (the dataset's ``RTSTRUCT_segmentation`` files) or
            ``"ground-truth"`` (``<data>/ground_truth/instances/<P>/<S>.nii.gz``,
            synthetic cohorts).
        root: The predictions root, or the dataset root for ground truth.
    """

    kind: MaskKind
    root: Path | None = None

    def path(self, study: Study) -> Path | None:
        """The mask file of ``study``, or ``None`` when there is none."""
        if self.kind == "labels":
            return study.label_path
        if self.root is None:
            raise ValueError(f"mask source {self.kind!r} needs a root folder")
        if self.kind == "predictions":
            folder = schema.prediction_dir(self.root, study.patient_id, study.study_id)
            return find_nifti(folder, schema.PREDICTION_MASK)
        folder = self.root / schema.GROUND_TRUTH_DIR / GT_INSTANCES_DIR / study.patient_id
        return find_nifti(folder, study.study_id)


def tracked_map_path(out: str | Path, patient_id: str, study_id: str) -> Path:
    """Where ``write_outputs`` puts one study's tracked map."""
    return (
        Path(out)
        / TRACKED_DIR
        / "patientId"
        / patient_id
        / "studyId"
        / study_id
        / f"{TRACKED_MAP}.nii.gz"
    )


def read_transforms_csv(path: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Read per-study ``baseline_to_study`` transforms from a CSV.

    Accepted layouts: columns ``PatientID, StudyID`` plus either sixteen
    columns ``m00 .. m33`` (row-major 4x4), or one column ``baseline_to_study``
    holding 16 numbers (JSON list or whitespace/comma separated).

    Returns:
        (PatientID, StudyID) -> float64 (4, 4) matrix.

    Raises:
        DatasetError: Missing file, missing columns or a malformed matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: transforms table not found")
    df = pd.read_csv(path, dtype={"PatientID": str, "StudyID": str})
    for col in ("PatientID", "StudyID"):
        if col not in df.columns:
            raise DatasetError(f"{path}: missing column {col!r} (found {', '.join(df.columns)})")
    mcols = [f"m{i}{j}" for i in range(4) for j in range(4)]
    out: dict[tuple[str, str], np.ndarray] = {}
    for n, row in df.iterrows():
        if all(c in df.columns for c in mcols):
            vals = [row[c] for c in mcols]
        elif "baseline_to_study" in df.columns:
            text = str(row["baseline_to_study"]).replace("[", " ").replace("]", " ")
            vals = [v for v in text.replace(",", " ").split() if v]
        else:
            raise DatasetError(
                f"{path}: expected columns m00..m33 or baseline_to_study holding the 4x4 "
                "baseline_to_study matrix"
            )
        try:
            mat = np.asarray([float(v) for v in vals], dtype=np.float64).reshape(4, 4)
        except ValueError as exc:
            raise DatasetError(f"{path}: row {n + 2}: not a 4x4 matrix ({exc})") from None
        if not np.all(np.isfinite(mat)) or abs(np.linalg.det(mat[:3, :3])) < 1e-9:
            raise DatasetError(f"{path}: row {n + 2}: singular or non-finite transform")
        out[(str(row["PatientID"]), str(row["StudyID"]))] = mat
    return out


def read_transforms(path: str | Path) -> dict[tuple[str, str], np.ndarray | StudyTransform]:
    """Read per-study transforms from a CSV or from a preprocessed dataset.

    Args:
        path: A CSV (see :func:`read_transforms_csv`), or a folder written by
            ``metstrack preprocess`` holding ``transforms/<P>/<S>.json`` (or that
            ``transforms`` folder itself); the JSON files also give each
            patient's baseline grid.

    Returns:
        (PatientID, StudyID) -> 4x4 matrix (CSV) or
        :class:`~metstrack.core.mapping.StudyTransform` (JSON).

    Raises:
        DatasetError: Nothing readable at ``path``.
    """
    path = Path(path)
    if path.is_file():
        return dict(read_transforms_csv(path))
    folder = path / TRANSFORMS_DIR if (path / TRANSFORMS_DIR).is_dir() else path
    files = sorted(folder.glob("*/*.json")) if folder.is_dir() else []
    if not files:
        raise DatasetError(
            f"{path}: no transforms found; give a CSV (PatientID, StudyID, m00..m33) or a "
            "folder written by `metstrack preprocess` (transforms/<PatientID>/<StudyID>.json)"
        )
    out: dict[tuple[str, str], np.ndarray | StudyTransform] = {}
    for f in files:
        st = load_transform(f)
        out[(st.patient_id, st.study_id)] = st
    return out
