"""The written cohort follows the release schema and its ground truth agrees with it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metstrack.core import schema
from metstrack.io.nifti import read_label, read_volume
from metstrack.synth.clinical import GT_BURDEN, GT_TRAJECTORIES, GT_TRANSFORMS
from metstrack.types import DAYS_PER_MONTH, LABEL_SEQUENCE, MODALITIES, PLANNING_SEQUENCE


def _tables(root):
    return {
        name: pd.read_csv(schema.table_path(root, name))
        for name in (
            schema.IMAGING_TABLE,
            schema.SPLIT_TABLE,
            schema.EVENTS_TABLE,
            schema.PATIENTS_TABLE,
            schema.TARGETS_TABLE,
        )
    }


def test_tables_have_schema_columns(small_cohort):
    t = _tables(small_cohort)
    assert tuple(t[schema.IMAGING_TABLE].columns) == schema.IMAGING_COLUMNS
    assert tuple(t[schema.SPLIT_TABLE].columns) == schema.SPLIT_COLUMNS
    assert tuple(t[schema.EVENTS_TABLE].columns) == schema.EVENT_COLUMNS
    assert tuple(t[schema.PATIENTS_TABLE].columns) == schema.PATIENT_COLUMNS
    assert tuple(t[schema.TARGETS_TABLE].columns) == schema.TARGET_COLUMNS
    links = pd.read_csv(small_cohort / "ground_truth" / "target_lesions.csv")
    merged = t[schema.TARGETS_TABLE].merge(links, on=["PatientID", "target_id", "StudyID"])
    assert len(merged) == len(t[schema.TARGETS_TABLE]) > 0
    assert set(t[schema.EVENTS_TABLE]["visit_class"]) <= {1, 2, 3, 4, 5}


def test_every_flagged_file_exists_and_grids_agree(small_cohort):
    imaging = _tables(small_cohort)[schema.IMAGING_TABLE]
    assert imaging["StudyID"].is_unique
    for pid, group in imaging.groupby("PatientID"):
        assert list(group["RelativeTimepoint"]) == list(range(1, len(group) + 1))
        assert group["DaysFromBaselineScan"].is_monotonic_increasing
        assert group["DaysFromBaselineScan"].iloc[0] == 0
        study_affines = []
        for _, row in group.iterrows():
            folder = schema.study_dir(small_cohort, pid, row["StudyID"])
            affines = []
            for seq in MODALITIES:
                assert row[seq] == 1
                vol = read_volume(folder / f"{seq}.nii.gz", dtype=None)
                assert vol.array.dtype == np.int16
                affines.append(vol.affine)
            assert (folder / f"{PLANNING_SEQUENCE}.nii.gz").exists() == bool(row["RTSTRUCT_MRI"])
            # The release label file exists exactly where flagged; the ground truth
            # holds every study's label.
            released = folder / f"{LABEL_SEQUENCE}.nii.gz"
            assert released.exists() == bool(row["RTSTRUCT_segmentation"])
            truth = schema.truth_label_path(small_cohort, pid, row["StudyID"])
            label = read_label(truth, binary=True)
            if released.exists():
                assert released.read_bytes() == truth.read_bytes()
            inst = read_label(
                small_cohort / "ground_truth" / "instances" / pid / f"{row['StudyID']}.nii.gz",
                binary=False,
            )
            np.testing.assert_array_equal(label.array > 0, inst.array > 0)
            # One grid per study: every sequence, the label and the instances share it.
            for a in [*affines, label.affine, inst.affine]:
                np.testing.assert_allclose(a, affines[0], atol=1e-4)
            study_affines.append(affines[0])
        # Clinical acquisition: every follow-up is on its own grid.
        for a in study_affines[1:]:
            assert not np.allclose(a, study_affines[0], atol=1e-3)


def test_default_policy_flags_only_radiosurgery_studies(small_cohort):
    imaging = _tables(small_cohort)[schema.IMAGING_TABLE]
    events = _tables(small_cohort)[schema.EVENTS_TABLE]
    srs_studies = set(events.loc[events["visit_class"] == 2, "StudyID"])
    flagged = set(imaging.loc[imaging["RTSTRUCT_segmentation"] == 1, "StudyID"])
    assert flagged == srs_studies
    assert 0 < len(flagged) < len(imaging)


def test_split_is_by_patient(small_cohort):
    t = _tables(small_cohort)
    merged = t[schema.SPLIT_TABLE].merge(t[schema.IMAGING_TABLE][["StudyID", "PatientID"]])
    assert (merged[["train", "val", "test"]].sum(axis=1) == 1).all()
    per_patient = merged.groupby("PatientID")[["train", "val", "test"]].nunique()
    assert (per_patient == 1).all().all()


def test_trajectories_match_instance_maps(small_cohort):
    traj = pd.read_csv(small_cohort / "ground_truth" / GT_TRAJECTORIES)
    assert {
        "PatientID",
        "lesion_id",
        "StudyID",
        "days_from_baseline",
        "volume_mm3",
        "treated",
        "kind",
    } <= set(traj.columns)
    burden = pd.read_csv(small_cohort / "ground_truth" / GT_BURDEN)
    for _, row in burden.iterrows():
        label = read_label(
            small_cohort
            / "ground_truth"
            / "instances"
            / row["PatientID"]
            / f"{row['StudyID']}.nii.gz",
            binary=False,
        )
        inst = label.array.astype(int)
        voxel_mm3 = abs(np.linalg.det(label.affine[:3, :3]))  # each study has its own grid
        ids, counts = np.unique(inst[inst > 0], return_counts=True)
        assert row["total_volume_mm3"] == pytest.approx(counts.sum() * voxel_mm3, abs=1e-3)
        sub = traj[traj["StudyID"] == row["StudyID"]].set_index("lesion_id")
        for i, c in zip(ids, counts, strict=True):
            assert sub.loc[i, "volume_mm3"] == pytest.approx(c * voxel_mm3, abs=1e-3)


def test_transforms_table_and_survival_truth(small_cohort):
    tf = pd.read_csv(small_cohort / "ground_truth" / GT_TRANSFORMS)
    assert [f"m{a}{b}" for a in range(4) for b in range(4)] == list(tf.columns[2:18])
    first = tf.groupby("PatientID").head(1)
    assert np.allclose(
        first[[f"m{a}{b}" for a in range(4) for b in range(4)]].to_numpy(), np.eye(4).ravel()
    )
    truth = json.loads((small_cohort / "ground_truth" / "survival_truth.json").read_text())
    assert np.isclose(truth["coefficients"]["rate_cm3_per_month"], np.log(1.27))
    assert truth["units"]["days_per_month"] == DAYS_PER_MONTH
    cfg = json.loads((small_cohort / "ground_truth" / "config.json").read_text())
    assert cfg["config"]["shape"] == 48 and cfg["config"]["seed"] == 11


def test_rate_from_written_labels_matches_the_planted_rate(small_cohort):
    from metstrack.synth.timeline import least_squares_rate_cm3_per_month

    burden = pd.read_csv(small_cohort / "ground_truth" / GT_BURDEN)
    truth = pd.read_csv(small_cohort / "ground_truth" / "patient_truth.csv").set_index("PatientID")
    for pid, g in burden.groupby("PatientID"):
        rate = least_squares_rate_cm3_per_month(g["days_from_baseline"], g["total_volume_mm3"])
        planted = truth.loc[pid, "rate_cm3_per_month"]
        # Voxel counts match the planned volumes up to rounding of each lesion.
        assert abs(rate - planted) <= 0.01 + 0.05 * abs(planted), pid
    months = burden["days_from_baseline"] / DAYS_PER_MONTH
    assert months.max() > 1


def test_radiosurgery_targets_match_the_planning_labels(small_cohort):
    targets = pd.read_csv(schema.table_path(small_cohort, schema.TARGETS_TABLE))
    links = pd.read_csv(small_cohort / "ground_truth" / "target_lesions.csv")
    targets = targets.merge(links, on=["PatientID", "target_id", "StudyID"])
    checked = 0
    for _, row in targets.iterrows():
        inst = read_label(
            small_cohort
            / "ground_truth"
            / "instances"
            / row["PatientID"]
            / f"{row['StudyID']}.nii.gz",
            binary=False,
        )
        vox = np.argwhere(inst.array == row["lesion_id"])
        voxel_mm3 = abs(np.linalg.det(inst.affine[:3, :3]))
        assert len(vox) * voxel_mm3 == pytest.approx(row["target_volume_mm3"], abs=1e-3)
        if len(vox) >= 7:
            centroid = inst.affine[:3, :3] @ vox.mean(axis=0) + inst.affine[:3, 3]
            c = row[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(float)
            assert np.linalg.norm(centroid - c) < 1.5
            checked += 1
        assert row["dose_gy"] in (15.0, 18.0, 20.0, 24.0)
    assert checked >= 1
