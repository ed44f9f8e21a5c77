"""Mapping results between a study's native grid and its patient's baseline grid.

``metstrack preprocess`` puts every study of a patient on the baseline T1
post's isotropic RAS grid and writes, per study,
``transforms/<PatientID>/<StudyID>.json`` (a :class:`StudyTransform`). Inference
and tracking work on the baseline grid; :func:`map_to_native` brings a result
back onto the study's original T1 post file grid, :func:`map_to_baseline` the
other way.

Convention (:mod:`metstrack.core.spatial`): ``baseline_to_study`` maps a
baseline world point (RAS, mm) to where the same anatomy lies in the study's
native world space. It is the identity for the baseline study itself up to its
own reorientation (world coordinates never change under reorientation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metstrack.core.atomic import write_json_atomic
from metstrack.core.grid import Grid
from metstrack.core.spatial import resample_array
from metstrack.errors import DatasetError, GeometryMismatchError
from metstrack.types import Volume

TRANSFORMS_DIR = "transforms"
#: Format version of the per-study transform JSON.
TRANSFORM_FORMAT = 1


@dataclass(frozen=True, eq=False)
class StudyTransform:
    """Geometry linking one study's native grid to its patient's baseline grid.

    Attributes:
        patient_id: Release PatientID.
        study_id: Release StudyID.
        baseline_study_id: The patient's baseline StudyID.
        baseline_to_study: float64 (4, 4) world matrix (RAS, mm), baseline -> study.
        native_grid: Grid of the study's original T1 post file (as stored on disk).
        baseline_grid: The grid every preprocessed study of the patient is on.
    """

    patient_id: str
    study_id: str
    baseline_study_id: str
    baseline_to_study: np.ndarray
    native_grid: Grid
    baseline_grid: Grid

    def to_dict(self) -> dict:
        """JSON-friendly form (the on-disk format)."""
        return {
            "format": TRANSFORM_FORMAT,
            "convention": "baseline_to_study maps baseline world (RAS mm) to study world",
            "PatientID": self.patient_id,
            "StudyID": self.study_id,
            "baseline_StudyID": self.baseline_study_id,
            "baseline_to_study": np.asarray(self.baseline_to_study).tolist(),
            "native_grid": self.native_grid.to_dict(),
            "baseline_grid": self.baseline_grid.to_dict(),
        }


def transform_path(out_root: str | Path, patient_id: str, study_id: str) -> Path:
    """``<out_root>/transforms/<PatientID>/<StudyID>.json``."""
    return Path(out_root) / TRANSFORMS_DIR / patient_id / f"{study_id}.json"


def save_transform(out_root: str | Path, st: StudyTransform) -> Path:
    """Write a study's transform JSON atomically and return its path."""
    return write_json_atomic(transform_path(out_root, st.patient_id, st.study_id), st.to_dict())


def load_transform(
    path_or_root: str | Path, patient_id: str | None = None, study_id: str | None = None
) -> StudyTransform:
    """Read a study's transform JSON.

    Args:
        path_or_root: The JSON file, or a preprocessed dataset root (then give
            ``patient_id`` and ``study_id``).
        patient_id: PatientID when a root is given.
        study_id: StudyID when a root is given.

    Raises:
        DatasetError: Missing or malformed file (named in the message).
    """
    path = Path(path_or_root)
    if patient_id is not None and study_id is not None:
        path = transform_path(path, patient_id, study_id)
    if not path.is_file():
        raise DatasetError(
            f"{path}: transform file not found; run `metstrack preprocess` on the dataset first"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        m = np.asarray(d["baseline_to_study"], dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"baseline_to_study has shape {m.shape}, expected (4, 4)")
        return StudyTransform(
            patient_id=str(d["PatientID"]),
            study_id=str(d["StudyID"]),
            baseline_study_id=str(d["baseline_StudyID"]),
            baseline_to_study=m,
            native_grid=Grid.from_dict(d["native_grid"]),
            baseline_grid=Grid.from_dict(d["baseline_grid"]),
        )
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: malformed transform file ({exc})") from exc


def _arr_aff(v: Volume | np.ndarray, grid: Grid | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(v, Volume):
        if grid is not None and not Grid.of(v).same_as(grid):
            raise GeometryMismatchError(
                f"{v.path or what}: volume grid {v.describe_grid()} is not the expected {what} grid"
            )
        return v.array, np.asarray(v.affine, dtype=np.float64)
    if grid is None:
        raise ValueError(f"a bare array needs its {what} grid")
    arr = np.asarray(v)
    if tuple(arr.shape) != tuple(grid.shape):
        raise GeometryMismatchError(
            f"array shape {arr.shape} differs from the {what} grid shape {grid.shape}"
        )
    return arr, grid.affine


def map_to_native(
    volume_on_baseline_grid: Volume | np.ndarray,
    study_native_grid: Grid | Volume,
    transform: np.ndarray | StudyTransform,
    order: int = 0,
    *,
    baseline_grid: Grid | None = None,
) -> Volume:
    """Resample a baseline-grid result (mask, probability) onto a study's native grid.

    Args:
        volume_on_baseline_grid: (X, Y, Z) result on the baseline grid: a Volume,
            or a bare array with ``baseline_grid`` (or a StudyTransform) giving its grid.
        study_native_grid: Target grid (the study's original T1 post file).
        transform: ``baseline_to_study`` 4x4 matrix, or the study's StudyTransform.
        order: 0 nearest neighbour (labels keep their dtype), 1 linear, 3 B-spline.
        baseline_grid: Grid of a bare input array.

    Returns:
        Volume on ``study_native_grid`` (labels keep dtype; images float32).
    """
    if isinstance(transform, StudyTransform):
        baseline_grid = baseline_grid or transform.baseline_grid
        transform = transform.baseline_to_study
    arr, aff = _arr_aff(volume_on_baseline_grid, baseline_grid, "baseline")
    target = Grid.of(study_native_grid)
    study_to_baseline = np.linalg.inv(np.asarray(transform, dtype=np.float64))
    out = resample_array(
        arr, aff, target.shape, target.affine, transform=study_to_baseline, order=order
    )
    return Volume(array=out, affine=target.affine.copy())


def map_to_baseline(
    volume_on_native_grid: Volume | np.ndarray,
    baseline_grid: Grid | Volume,
    transform: np.ndarray | StudyTransform,
    order: int = 0,
    *,
    native_grid: Grid | None = None,
) -> Volume:
    """Resample a native-grid volume of a study onto its patient's baseline grid.

    Args:
        volume_on_native_grid: (X, Y, Z) volume on the study's native grid (a Volume,
            or a bare array with ``native_grid`` or a StudyTransform giving its grid).
        baseline_grid: Target grid (the patient's preprocessed grid).
        transform: ``baseline_to_study`` 4x4 matrix, or the study's StudyTransform.
        order: 0 nearest neighbour (labels keep their dtype), 1 linear, 3 B-spline.
        native_grid: Grid of a bare input array.

    Returns:
        Volume on ``baseline_grid``.
    """
    if isinstance(transform, StudyTransform):
        native_grid = native_grid or transform.native_grid
        transform = transform.baseline_to_study
    arr, aff = _arr_aff(volume_on_native_grid, native_grid, "native")
    target = Grid.of(baseline_grid)
    out = resample_array(
        arr,
        aff,
        target.shape,
        target.affine,
        transform=np.asarray(transform, dtype=np.float64),
        order=order,
    )
    return Volume(array=out, affine=target.affine.copy())
