"""Cox fits: agreement with published and independent implementations, and bad data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_rossi

from metstrack.errors import SurvivalDataError
from metstrack.survival.cox import CoxAnalysis
from metstrack.survival.dynamic import fit_time_varying, landmark_table, time_varying_table
from metstrack.survival.table import build_analysis_table

ROSSI = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


def test_recovers_lifelines_documented_rossi_coefficients():
    # lifelines' documentation (Rossi recidivism data) reports these coefficients.
    published = {
        "fin": -0.38,
        "age": -0.06,
        "race": 0.31,
        "wexp": -0.15,
        "mar": -0.43,
        "paro": -0.08,
        "prio": 0.09,
    }
    cox = CoxAnalysis().fit(load_rossi(), duration_col="week", event_col="arrest", covariates=ROSSI)
    got = cox.summary_.set_index("covariate")["coef"]
    for k, v in published.items():
        assert got[k] == pytest.approx(v, abs=0.006)
    assert cox.concordance_ == pytest.approx(0.64, abs=0.01)
    assert cox.lr_test_["df"] == 7 and cox.lr_test_["p"] < 1e-4
    # PH test: lifelines' docs flag age and wexp on this data set
    viol = set(cox.ph_test_.loc[cox.ph_test_["violated"], "covariate"])
    assert {"age", "wexp"} <= viol


def test_agrees_with_statsmodels_phreg_on_random_data(rng):
    from statsmodels.duration.hazard_regression import PHReg

    n = 300
    x = rng.normal(size=(n, 3))
    t = rng.exponential(1 / np.exp(x @ np.array([0.5, -0.3, 0.0])))
    c = rng.exponential(2.0, n)
    time = np.round(np.minimum(t, c) * 50) / 50 + 0.01  # ties, handled by Efron in both
    ev = (t < c).astype(int)
    df = pd.DataFrame(x, columns=["a", "b", "c"]).assign(time=time, ev=ev)
    ours = CoxAnalysis().fit(df, duration_col="time", event_col="ev", covariates=["a", "b", "c"])
    sm = PHReg(time, x, status=ev, ties="efron").fit()
    np.testing.assert_allclose(ours.summary_["coef"], sm.params, atol=1e-4)
    np.testing.assert_allclose(ours.summary_["se"], sm.bse, rtol=1e-3)


def test_hr_per_unit_and_per_sd(cohort):
    clin, burden, _ = cohort
    t = build_analysis_table(clin, burden)
    cox = CoxAnalysis().fit(t.frame, covariates=t.covariates)
    row = cox.summary_.set_index("covariate").loc["rate_volume_cm3_per_month"]
    assert row["hr_per_sd"] == pytest.approx(np.exp(row["coef"] * row["sd"]))
    assert row["unit"].startswith("per 1 cm3/month")
    hr, lo, hi = cox.hazard_ratio("rate_volume_cm3_per_month")
    assert lo < hr < hi and lo > 1.0  # planted 1.27; 400 patients give a clearly raised HR


def test_no_events_is_a_clear_error(cohort):
    clin, burden, _ = cohort
    t = build_analysis_table(clin.assign(death=False), burden)
    with pytest.raises(SurvivalDataError, match="no events"):
        CoxAnalysis().fit(t.frame, covariates=t.covariates)


def test_constant_covariate_is_named(cohort):
    clin, burden, _ = cohort
    t = build_analysis_table(clin.assign(kps=80.0), burden)
    with pytest.raises(SurvivalDataError, match="covariate 'kps' is constant"):
        CoxAnalysis().fit(t.frame, covariates=t.covariates)


def test_perfect_separation_suggests_a_penalizer(rng):
    n = 120
    x = rng.integers(0, 2, n)
    df = pd.DataFrame({"x": x, "z": rng.normal(size=n), "time": rng.uniform(1, 100, n), "ev": x})
    with pytest.raises(SurvivalDataError, match="separates events perfectly.*likely x.*penalizer"):
        CoxAnalysis().fit(df, duration_col="time", event_col="ev", covariates=["x", "z"])
    ok = CoxAnalysis(penalizer=0.5).fit(
        df, duration_col="time", event_col="ev", covariates=["x", "z"]
    )
    assert np.isfinite(ok.summary_["coef"]).all()


def test_landmark_uses_only_earlier_scans_and_at_risk_patients(cohort):
    clin, burden, rate = cohort
    t = build_analysis_table(clin, burden)
    lt = landmark_table(t, burden, 100.0)
    # landmark 100 d after first SRS (= day 110 from the first scan): scans at 0 and 60 only
    assert (lt.frame["n_studies"] == 2).all()
    assert (lt.frame["time_days"] > 0).all()
    assert len(lt.frame) == int((t.frame["time_days"] > 100).sum())
    idx = lt.frame["PatientID"].str[1:].astype(int)
    np.testing.assert_allclose(lt.frame["rate_volume_cm3_per_month"], rate[idx], atol=1e-9)


def test_time_varying_intervals_start_at_second_scan(cohort):
    clin, burden, _ = cohort
    t = build_analysis_table(clin, burden)
    long = time_varying_table(t, burden)
    first = long.groupby("PatientID")["start"].min()
    assert (first == 50.0).all()  # second scan at day 60, first SRS at day 10
    assert (long["stop"] > long["start"]).all()
    deaths = long.groupby("PatientID")["death"].sum()
    assert deaths.max() == 1
    s = fit_time_varying(long, t.covariates)
    hr = s.set_index("covariate").loc["rate_volume_cm3_per_month", "hr"]
    assert 1.0 < hr < 1.7


def test_planted_hazard_ratio_is_recovered_on_a_large_cohort(make_survival_cohort):
    clin, burden, _ = make_survival_cohort(3000, seed=7)
    t = build_analysis_table(clin, burden)
    cox = CoxAnalysis().fit(t.frame, covariates=t.covariates)
    hr, lo, hi = cox.hazard_ratio("rate_volume_cm3_per_month")
    assert lo < 1.27 < hi
    assert hr == pytest.approx(1.27, rel=0.06)
