"""Tiny datasets in the release layout (and its cousins) written by the tests themselves.

Not a test module: imported by tests under ``tests/io`` and ``tests/cli``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.core import schema
from metstrack.io.nifti import write_volume
from metstrack.types import LABEL_SEQUENCE, MODALITIES, SEQUENCES

SHAPE = (8, 8, 8)


def affine(spacing=(1.0, 1.0, 1.0), origin=(-4.0, -4.0, -4.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, size=shape).astype(np.float32)


def mask(shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[2:4, 2:4, 2:4] = 1
    return m


def write_release(
    root: Path,
    *,
    patients: dict[str, list[float]] | None = None,
    splits: dict[str, str] | None = None,
    labelled: set[str] | None = None,
    ext: str = ".nii.gz",
    clinical: bool = True,
    with_split: bool = True,
) -> Path:
    """Write a small release-layout dataset and return ``root``.

    Args:
        root: Target folder.
        patients: PatientID -> days from baseline of each study (StudyIDs are
            ``<PatientID>S<k>`` with k the 1-based rank).
        splits: PatientID -> split name.
        labelled: StudyIDs that get a label file and flag (default: each patient's first).
        ext: Image file suffix.
        clinical: Also write the three clinical tables.
        with_split: Write ``tables/split.csv``.
    """
    patients = patients or {"P02": [0.0, 91.0, 180.0], "P01": [0.0, 60.0]}
    splits = splits or {pid: ("train" if i % 2 == 0 else "test") for i, pid in enumerate(patients)}
    if labelled is None:
        labelled = {f"{pid}S1" for pid in patients}
    rows, split_rows = [], []
    seed = 0
    for pid, days in patients.items():
        for k, d in enumerate(days, start=1):
            sid = f"{pid}S{k}"
            folder = schema.study_dir(root, pid, sid)
            for m in MODALITIES:
                seed += 1
                write_volume(image(seed), folder / f"{m}{ext}", affine=affine())
            if sid in labelled:
                write_volume(mask(), folder / f"{LABEL_SEQUENCE}{ext}", affine=affine())
            row = {"PatientID": pid, "StudyID": sid}
            row.update(
                {
                    s: int(s in MODALITIES or (s == LABEL_SEQUENCE and sid in labelled))
                    for s in SEQUENCES
                }
            )
            row.update(
                {
                    "ExpertAdjusted": int(sid in labelled),
                    "DaysFromBaselineScan": d,
                    "RelativeTimepoint": k,
                }
            )
            rows.append(row)
            split_rows.append(
                {"StudyID": sid, **{s: int(splits[pid] == s) for s in ("train", "val", "test")}}
            )
    tables = root / schema.TABLES_DIR
    tables.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(tables / schema.IMAGING_TABLE, index=False)
    if with_split:
        pd.DataFrame(split_rows).to_csv(tables / schema.SPLIT_TABLE, index=False)
    if clinical:
        pids = list(patients)
        pd.DataFrame(
            [
                {
                    "PatientID": pid,
                    "age_years": 60 + i,
                    "sex": "F" if i % 2 else "M",
                    "primary_histology": "lung",
                    "kps": 80,
                    "extracranial_disease": 1,
                    "death": i % 2,
                    "days_to_death_or_followup": 400 + 10 * i,
                    "first_srs_days_from_baseline_scan": 7,
                }
                for i, pid in enumerate(pids)
            ]
        ).to_csv(tables / schema.PATIENTS_TABLE, index=False)
        events = []
        for pid in pids:
            events.append(
                {
                    "PatientID": pid,
                    "visit_class": 2,
                    "days_from_first_srs": 0,
                    "StudyID": "",
                    "description": "SRS",
                }
            )
            events.append(
                {
                    "PatientID": pid,
                    "visit_class": 3,
                    "days_from_first_srs": -7,
                    "StudyID": f"{pid}S1",
                    "description": "",
                }
            )
        pd.DataFrame(events).to_csv(tables / schema.EVENTS_TABLE, index=False)
        pd.DataFrame(
            [
                {
                    "PatientID": pid,
                    "target_id": 1,
                    "StudyID": f"{pid}S1",
                    "days_from_first_srs": 0,
                    "target_volume_mm3": 8.0,
                    "dose_gy": 20.0,
                    "centroid_x_mm": 0.5,
                    "centroid_y_mm": -0.5,
                    "centroid_z_mm": 1.0,
                }
                for pid in pids
            ]
        ).to_csv(tables / schema.TARGETS_TABLE, index=False)
    return root


def edit_table(root: Path, name: str, edit) -> Path:
    """Load table ``name`` as strings, apply ``edit(df) -> df`` and write it back."""
    path = schema.table_path(root, name)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(df).to_csv(path, index=False)
    return path
