"""Fixtures of the training tests: a tiny co-registered cohort written as NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metstrack.io.nifti import write_volume
from metstrack.types import LABEL_SEQUENCE, MODALITIES, Cohort, Patient, Series, Study


def _sphere(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum((g[i] - centre[i]) ** 2 for i in range(3))
    return d2 <= radius**2


def write_tiny_cohort(
    root: Path,
    *,
    n_patients: int = 3,
    n_studies: int = 3,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int = 0,
    labelled: str = "all",
    splits: tuple[str, ...] | None = None,
) -> Cohort:
    """Write a tiny cohort (head ellipsoid, bright spheres as lesions) and return its records.

    Args:
        root: Folder to write into.
        n_patients: Patients.
        n_studies: Studies per patient (same grid).
        shape: Volume shape.
        seed: Random seed.
        labelled: ``"all"`` or ``"first"`` (only the first study flagged labelled;
            label files are written for every study).
        splits: Split per patient (default: all ``"train"`` except the last ``"val"``).
    """
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    c = np.array(shape) / 2
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    head = sum(((g[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(3)) <= 1
    if splits is None:
        splits = tuple(["train"] * (n_patients - 1) + ["val"])
    patients = []
    for p in range(n_patients):
        pid = f"P{p:03d}"
        lo = np.array(shape) // 3
        centres = [rng.integers(lo, np.array(shape) - lo) for _ in range(2)]
        radii = [1.0, 3.0]
        studies = []
        for s in range(n_studies):
            sid = f"{pid}S{s}"
            folder = root / "imaging" / "patientId" / pid / "studyId" / sid
            lab = np.zeros(shape, bool)
            for cen, r in zip(centres, radii, strict=True):
                lab |= _sphere(shape, cen, r + 0.5 * s)
            lab &= head
            series = []
            for m_i, m in enumerate(MODALITIES):
                img = head * (100.0 + 20 * m_i) + rng.normal(0, 5, shape) * head
                if m == "CT1":
                    img = img + 120.0 * lab
                elif m in ("T2", "FLAIR"):
                    img = img + 40.0 * lab
                path = write_volume(img.astype(np.float32), folder / f"{m}.nii.gz", affine=affine)
                series.append(Series(m, path))
            lpath = write_volume(
                lab.astype(np.uint8), folder / f"{LABEL_SEQUENCE}.nii.gz", affine=affine
            )
            series.append(Series(LABEL_SEQUENCE, lpath))
            is_lab = labelled == "all" or s == 0
            studies.append(
                Study(
                    study_id=sid,
                    patient_id=pid,
                    days_from_baseline=90.0 * s,
                    relative_timepoint=s + 1,
                    series=tuple(series),
                    sequences_flagged=(*MODALITIES, LABEL_SEQUENCE),
                    labelled=is_lab,
                    split=splits[p],
                )
            )
        patients.append(Patient(pid, tuple(studies), splits[p]))
    cohort = Cohort(root=root, patients=tuple(patients))
    _write_tables(cohort)
    return cohort


def _write_tables(cohort: Cohort) -> None:
    """Imaging and split tables of the release layout, so ``read_release`` reads the folder."""
    import pandas as pd

    from metstrack.core import schema

    rows, split_rows = [], []
    for p in cohort.patients:
        for s in p.studies:
            have = {x.sequence for x in s.series}
            row = {"PatientID": p.patient_id, "StudyID": s.study_id}
            for seq in schema.SEQUENCES:
                row[seq] = int(seq in have and (seq != LABEL_SEQUENCE or s.labelled))
            row.update(
                ExpertAdjusted=0,
                DaysFromBaselineScan=s.days_from_baseline,
                RelativeTimepoint=s.relative_timepoint,
            )
            rows.append(row)
            split_rows.append(
                {"StudyID": s.study_id, **{k: int(p.split == k) for k in ("train", "val", "test")}}
            )
    tables = cohort.root / schema.TABLES_DIR
    tables.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(schema.IMAGING_COLUMNS)).to_csv(
        tables / schema.IMAGING_TABLE, index=False
    )
    pd.DataFrame(split_rows, columns=list(schema.SPLIT_COLUMNS)).to_csv(
        tables / schema.SPLIT_TABLE, index=False
    )


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Cohort:
    """Three patients (two train, one val) of three 32^3 studies, every study labelled."""
    return write_tiny_cohort(tmp_path_factory.mktemp("tiny_cohort"))


@pytest.fixture
def fresh_cohort(tmp_path) -> Cohort:
    """A tiny cohort in the test's own folder (for tests that edit files)."""
    return write_tiny_cohort(tmp_path / "cohort", n_patients=2, n_studies=2)
