"""``metstrack track`` on a tiny release-layout dataset laid out by the test."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metstrack.core import schema
from metstrack.io.nifti import read_label, write_volume
from metstrack.types import SEQUENCES

pytest.importorskip("metstrack.io.release", reason="the release reader has not landed yet")

STUDIES = {"P1": [("P1-s0", 0.0), ("P1-s1", 60.0), ("P1-s2", 120.0)], "P2": [("P2-s0", 0.0)]}


def _write_dataset(tk, root, *, shift_follow_up_mm=0.0):
    """Two patients: P1 with a growing lesion, a new one and a target; P2 with one study."""
    rows, events, targets, pats = [], [], [], []
    aff = tk.affine()
    for pid, studies in STUDIES.items():
        for i, (sid, day) in enumerate(studies):
            if pid == "P1":
                parts = [tk.ball((8, 8, 8), 2 + i), tk.ball((22, 22, 22), 3)]
                if i == 2:
                    parts.append(tk.ball((24, 8, 24), 1.5))
            else:
                parts = [tk.ball((16, 16, 16), 2)]
            m = tk.mask(*parts).array
            a = aff.copy()
            if i > 0:
                a[0, 3] -= shift_follow_up_mm  # anatomy appears shifted in the follow-up
            write_volume(
                m, schema.study_dir(root, pid, sid) / "RTSTRUCT_segmentation.nii.gz", affine=a
            )
            flags = {s: int(s == "RTSTRUCT_segmentation") for s in SEQUENCES}
            rows.append(
                {
                    "PatientID": pid,
                    "StudyID": sid,
                    **flags,
                    "ExpertAdjusted": 1,
                    "DaysFromBaselineScan": day,
                    "RelativeTimepoint": i + 1,
                }
            )
            events.append(
                {
                    "PatientID": pid,
                    "visit_class": 3,
                    "days_from_first_srs": day - 30,
                    "StudyID": sid,
                    "description": "MRI",
                }
            )
        events.append(
            {
                "PatientID": pid,
                "visit_class": 2,
                "days_from_first_srs": 0.0,
                "StudyID": "",
                "description": "SRS",
            }
        )
        pats.append(
            {
                "PatientID": pid,
                "age_years": 60,
                "sex": "F",
                "primary_histology": "lung",
                "kps": 80,
                "extracranial_disease": 1,
                "death": 0,
                "days_to_death_or_followup": 400,
                "first_srs_days_from_baseline_scan": 30,
            }
        )
    targets.append(
        {
            "PatientID": "P1",
            "target_id": 1,
            "StudyID": "P1-s0",
            "days_from_first_srs": 0.0,
            "target_volume_mm3": 33.0,
            "dose_gy": 20.0,
            "centroid_x_mm": 8.0,
            "centroid_y_mm": 8.0,
            "centroid_z_mm": 8.0,
        }
    )
    tables = root / schema.TABLES_DIR
    tables.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(schema.IMAGING_COLUMNS)).to_csv(
        tables / schema.IMAGING_TABLE, index=False
    )
    pd.DataFrame(events, columns=list(schema.EVENT_COLUMNS)).to_csv(
        tables / schema.EVENTS_TABLE, index=False
    )
    pd.DataFrame(pats, columns=list(schema.PATIENT_COLUMNS)).to_csv(
        tables / schema.PATIENTS_TABLE, index=False
    )
    pd.DataFrame(targets, columns=list(schema.TARGET_COLUMNS)).to_csv(
        tables / schema.TARGETS_TABLE, index=False
    )
    return root


def test_track_labels_writes_every_output(tk, tmp_path, cli):
    data = _write_dataset(tk, tmp_path / "data")
    out = tmp_path / "out"
    r = cli("track", "--data", data, "--labels", "--out", out)
    assert r.exit_code == 0, r.output
    assert "P1" in r.output and "lesion tracking" in r.output
    traj = pd.read_csv(out / "trajectories.csv")
    p1 = traj[traj["patient_id"] == "P1"]
    assert sorted(p1["lesion_id"].unique()) == [1, 2, 3]
    assert p1[p1["study_id"] == "P1-s2"]["status"].tolist().count("new") == 1
    burden = pd.read_csv(out / "burden.csv")
    assert burden["lesion_count"].tolist() == [2, 2, 3, 1]
    rates = pd.read_csv(out / "rates.csv").set_index("patient_id")
    assert bool(rates.loc["P1", "defined"]) and rates.loc["P1", "rate_volume_cm3_per_month"] > 0
    assert not bool(rates.loc["P2", "defined"]) and "one study" in rates.loc["P2", "reason"]
    resp = pd.read_csv(out / "response.csv")
    assert resp["rano_bm"].tolist()[-1] == "PD"  # a new lesion at the last study
    lc = pd.read_csv(out / "local_control.csv")
    assert lc["matched"].tolist() == [True] and lc["local_failure"].tolist() == [True]
    tracked = read_label(out / "tracked/patientId/P1/studyId/P1-s2/tracked.nii.gz", binary=False)
    assert (
        tracked.array[8, 8, 8]
        == traj[(traj["study_id"] == "P1-s0") & (traj["centroid_x_mm"].round() == 8)][
            "lesion_id"
        ].iloc[0]
    )
    assert (out / "timelines" / "P1.png").stat().st_size > 0
    assert (out / "timelines" / "P1.svg").is_file()
    saved = json.loads((out / "track_config.json").read_text())
    assert saved["config"]["matching"]["max_distance_mm"] == 10.0
    assert saved["mask_source"] == "labels"


def test_track_with_transforms_table(tk, tmp_path, cli):
    data = _write_dataset(tk, tmp_path / "data", shift_follow_up_mm=4.0)
    # follow-ups' affines moved by -4 mm: baseline point p is at p - 4 mm (x) in the follow-up
    rows = []
    for pid, studies in STUDIES.items():
        for i, (sid, _) in enumerate(studies):
            t = np.eye(4)
            if i > 0:
                t[0, 3] = -4.0
            rows.append(
                {
                    "PatientID": pid,
                    "StudyID": sid,
                    **{f"m{a}{b}": t[a, b] for a in range(4) for b in range(4)},
                }
            )
    tf = tmp_path / "transforms.csv"
    pd.DataFrame(rows).to_csv(tf, index=False)
    out = tmp_path / "out"
    r = cli("track", "--data", data, "--labels", "--transforms", tf, "--out", out, "--no-figures")
    assert r.exit_code == 0, r.output
    burden = pd.read_csv(out / "burden.csv")
    assert burden["lesion_count"].tolist() == [2, 2, 3, 1]
    assert not (out / "timelines").exists()
    # without the transforms the grids differ: refused with the registration hint
    r = cli("track", "--data", data, "--labels", "--out", tmp_path / "out2")
    assert r.exit_code == 1
    assert "metstrack preprocess" in r.output and "P1" in r.output


def test_track_usage_and_data_errors(tk, tmp_path, cli):
    data = _write_dataset(tk, tmp_path / "data")
    r = cli("track", "--data", data, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "exactly one mask source" in r.output
    r = cli("track", "--data", data, "--labels", "--masks", tmp_path, "--out", tmp_path / "o")
    assert r.exit_code == 2
    r = cli(
        "track",
        "--data",
        data,
        "--labels",
        "--out",
        tmp_path / "o",
        "--set",
        "matching.max_distanse_mm=3",
    )
    assert r.exit_code == 1 and "did you mean 'max_distance_mm'" in r.output
    r = cli("track", "--data", data, "--labels", "--out", tmp_path / "o", "--patient", "P9")
    assert r.exit_code == 1 and "P9" in r.output
    r = cli("track", "--data", tmp_path / "nope", "--labels", "--out", tmp_path / "o")
    assert r.exit_code == 1


def test_track_predictions_root(tk, tmp_path, cli):
    data = _write_dataset(tk, tmp_path / "data")
    pred = tmp_path / "pred"
    for pid, studies in STUDIES.items():
        for sid, _ in studies:
            lab = read_label(schema.study_dir(data, pid, sid) / "RTSTRUCT_segmentation.nii.gz")
            write_volume(lab, schema.prediction_dir(pred, pid, sid) / "mask.nii.gz")
    (schema.prediction_dir(pred, "P1", "P1-s1") / "mask.nii.gz").unlink()
    out = tmp_path / "out"
    r = cli("track", "--data", data, "--masks", pred, "--out", out, "--no-figures")
    assert r.exit_code == 0, r.output
    assert "1 studies skipped" in r.output
    saved = json.loads((out / "track_config.json").read_text())
    assert saved["skipped"] == [["P1", "P1-s1", "no predictions mask"]]
    assert pd.read_csv(out / "burden.csv")["study_id"].tolist() == ["P1-s0", "P1-s2", "P2-s0"]


def test_track_with_preprocess_transform_folder(tk, tmp_path, cli):
    from metstrack.core.grid import Grid
    from metstrack.core.mapping import StudyTransform, save_transform

    data = _write_dataset(tk, tmp_path / "data", shift_follow_up_mm=4.0)
    pre = tmp_path / "pre"
    base = Grid(shape=(16, 16, 16), affine=tk.affine((2.0, 2.0, 2.0)))  # a coarser baseline grid
    for pid, studies in STUDIES.items():
        for i, (sid, _) in enumerate(studies):
            t = np.eye(4)
            if i > 0:
                t[0, 3] = -4.0
            aff = tk.affine()
            aff[0, 3] -= 4.0 if i > 0 else 0.0
            save_transform(
                pre,
                StudyTransform(pid, sid, studies[0][0], t, Grid(shape=tk.SHAPE, affine=aff), base),
            )
    out = tmp_path / "out"
    r = cli("track", "--data", data, "--labels", "--transforms", pre, "--out", out, "--no-figures")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(out / "burden.csv")["lesion_count"].tolist() == [2, 2, 3, 1]
    tracked = read_label(out / "tracked/patientId/P1/studyId/P1-s1/tracked.nii.gz", binary=False)
    assert tracked.shape == (16, 16, 16) and tracked.spacing_mm == (2.0, 2.0, 2.0)
    r = cli("track", "--data", data, "--labels", "--transforms", tmp_path / "empty", "--out", out)
    assert r.exit_code == 1 and "no transforms found" in r.output
