"""The planted survival model: rate definition, no immortal time, recoverable hazard ratio."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from metstrack.synth.clinical import generate_clinical_only
from metstrack.synth.config import SynthConfig
from metstrack.synth.timeline import least_squares_rate_cm3_per_month
from metstrack.types import DAYS_PER_MONTH
from metstrack.workflows.synth import write_clinical_only


@pytest.fixture(scope="module")
def cohort():
    return generate_clinical_only(2000, seed=0)


def _analyst_frame(tables) -> pd.DataFrame:
    """What an analyst builds from the written tables alone."""
    b = tables.burden
    rate = {
        pid: least_squares_rate_cm3_per_month(g["days_from_baseline"], g["total_volume_mm3"])
        for pid, g in b.groupby("PatientID")
    }
    p = tables.patients.set_index("PatientID")
    x = pd.DataFrame(
        {
            "T": p["days_to_death_or_followup"],
            "E": p["death"],
            "rate": pd.Series(rate),
            "age": (p["age_years"] - 60) / 10,
            "kps": (p["kps"] - 80) / 10,
            "ecd": p["extracranial_disease"].astype(float),
        }
    )
    for h in ("breast", "melanoma", "renal", "gastrointestinal", "other"):
        x[h] = (p["primary_histology"] == h).astype(float)
    return x


def test_rate_from_any_subset_of_written_studies_equals_the_planted_rate(cohort):
    truth = cohort.tables.patient_truth.set_index("PatientID")["rate_cm3_per_month"]
    b = cohort.tables.burden
    for pid, g in list(b.groupby("PatientID"))[:300]:
        full = least_squares_rate_cm3_per_month(g["days_from_baseline"], g["total_volume_mm3"])
        first_two = least_squares_rate_cm3_per_month(
            g["days_from_baseline"][:2], g["total_volume_mm3"][:2]
        )
        assert full == pytest.approx(truth[pid], abs=1e-6)
        assert first_two == pytest.approx(truth[pid], abs=1e-5)
    assert (b["total_volume_mm3"] > 0).all()


def test_rate_spread_and_tables_are_plausible(cohort):
    truth = cohort.tables.patient_truth
    assert truth["rate_cm3_per_month"].std() > 0.3
    assert 0.5 < cohort.tables.patients["death"].mean() < 0.95
    per_patient = cohort.tables.imaging.groupby("PatientID").size()
    assert per_patient.min() >= 2 and per_patient.max() <= 8


def test_no_study_after_death_and_min_studies_before_time_zero(cohort):
    img = cohort.tables.imaging.merge(cohort.tables.patients, on="PatientID")
    from_srs = img["DaysFromBaselineScan"] - img["first_srs_days_from_baseline_scan"]
    assert (from_srs <= img["days_to_death_or_followup"]).all()
    dead = img["death"] == 1
    assert (from_srs[dead] < img.loc[dead, "days_to_death_or_followup"]).all()
    before_zero = (from_srs <= 0).groupby(img["PatientID"]).sum()
    assert (before_zero >= 2).all()


def test_cox_recovers_the_planted_hazard_ratio(cohort):
    from lifelines import CoxPHFitter

    x = _analyst_frame(cohort.tables)
    cph = CoxPHFitter().fit(x, duration_col="T", event_col="E")
    s = cph.summary.loc["rate"]
    assert s["coef lower 95%"] <= math.log(1.27) <= s["coef upper 95%"]
    # The CI is informative (the test could fail for a wrong coefficient).
    assert s["coef upper 95%"] - s["coef lower 95%"] < 0.3
    kps = cph.summary.loc["kps"]
    assert kps["coef lower 95%"] <= math.log(0.8) <= kps["coef upper 95%"]


def test_a_different_planted_ratio_is_recovered_too():
    from lifelines import CoxPHFitter

    cfg = SynthConfig(hazard_ratio=2.0)
    c = generate_clinical_only(1500, seed=5, config=cfg)
    assert c.tables.survival_truth["hazard_ratios"]["rate_cm3_per_month"] == pytest.approx(2.0)
    cph = CoxPHFitter().fit(_analyst_frame(c.tables), duration_col="T", event_col="E")
    s = cph.summary.loc["rate"]
    assert s["coef lower 95%"] <= math.log(2.0) <= s["coef upper 95%"]
    assert not s["coef lower 95%"] <= math.log(1.27) <= s["coef upper 95%"]


def test_clinical_only_is_deterministic_and_written(tmp_path):
    a = generate_clinical_only(50, seed=3)
    b = generate_clinical_only(50, seed=3)
    c = generate_clinical_only(50, seed=4)
    pd.testing.assert_frame_equal(a.tables.patients, b.tables.patients)
    pd.testing.assert_frame_equal(a.tables.burden, b.tables.burden)
    assert not a.tables.patients.equals(c.tables.patients)
    out = write_clinical_only(a, tmp_path / "clin")
    out2 = write_clinical_only(b, tmp_path / "clin2")
    for rel in (
        "tables/clinical_patients.csv",
        "tables/clinical_events.csv",
        "ground_truth/burden.csv",
        "ground_truth/lesion_trajectories.csv",
    ):
        assert (out / rel).read_bytes() == (out2 / rel).read_bytes()
    assert not (out / "imaging").exists()
    imaging = pd.read_csv(out / "tables" / "imaging.csv")
    assert (imaging[["T1", "CT1", "T2", "FLAIR", "RTSTRUCT_segmentation"]] == 0).all().all()


def test_small_lesion_share_in_planned_volumes(cohort):
    traj = cohort.tables.trajectories
    present = traj[traj["volume_mm3"] > 0]["volume_mm3"]
    assert (present < 10).mean() >= 0.3
    assert present.max() > 3000  # several cm3 occur
    counts = traj.groupby("PatientID")["lesion_id"].nunique()
    assert counts.min() >= 1 and counts.max() >= 15
    assert DAYS_PER_MONTH == 30.4375
    assert np.isfinite(present).all()


def test_small_lesion_fraction_setting_moves_the_size_distribution():
    def share(target):
        c = generate_clinical_only(300, seed=1, config=SynthConfig(small_lesion_fraction=target))
        v = c.tables.trajectories["volume_mm3"]
        v = v[v > 0]
        return float((v < 10).mean())

    low, default, high = share(0.15), share(0.3), share(0.6)
    assert low < default < high
    assert default >= 0.3
    assert abs(high - 0.6) < 0.1
