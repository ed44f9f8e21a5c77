"""Analysis-table construction on hand-made cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metstrack.errors import SurvivalDataError
from metstrack.survival.config import SurvivalConfig
from metstrack.survival.table import build_analysis_table, treatment_features
from metstrack.types import ClinicalEvent


def test_rates_and_times_are_computed(cohort):
    clin, burden, rate = cohort
    t = build_analysis_table(clin, burden)
    assert t.n_patients == len(clin)
    np.testing.assert_allclose(t.frame["rate_volume_cm3_per_month"], rate, atol=1e-9)
    np.testing.assert_allclose(t.frame["time_days"], clin["days_to_death_or_followup"])
    t2 = build_analysis_table(clin, burden, config=SurvivalConfig(origin="first_scan"))
    np.testing.assert_allclose(t2.frame["time_days"], clin["days_to_death_or_followup"] + 10.0)
    assert "primary_histology[breast]" in t.covariates  # lung is the most frequent: reference
    assert "primary_histology[lung]" not in t.covariates


def test_missing_values_are_reported_by_column_and_imputed_on_request(cohort):
    clin, burden, _ = cohort
    clin = clin.copy()
    clin.loc[:4, "kps"] = np.nan
    t = build_analysis_table(clin, burden)
    assert t.dropped == {"missing kps": 5}
    assert t.n_patients == len(clin) - 5
    ti = build_analysis_table(clin, burden, config=SurvivalConfig(impute="median"))
    assert ti.n_patients == len(clin)
    assert any("imputed 5 missing kps" in n for n in ti.notes)


def test_patient_without_imaging_is_named_and_refused_unless_allowed(cohort):
    clin, burden, _ = cohort
    burden = burden[burden["PatientID"] != "P0000"]
    with pytest.raises(SurvivalDataError) as exc:
        build_analysis_table(clin, burden, clinical_source="c.csv", burden_source="b.csv")
    msg = str(exc.value)
    assert msg.startswith("c.csv: 1 patient(s) have no rows in b.csv")
    assert "P0000" in msg and "--allow-missing-imaging" in msg
    allowed = SurvivalConfig(allow_missing_imaging=True)
    t = build_analysis_table(clin, burden, config=allowed)
    assert t.dropped["no imaging"] == 1
    assert "P0000" not in set(t.frame["PatientID"])
    assert any("P0000" in n for n in t.notes)


def test_one_study_patients_have_undefined_rate(cohort):
    clin, burden, _ = cohort
    burden = burden[~((burden["PatientID"] == "P0001") & (burden["days_from_baseline"] > 0))]
    t = build_analysis_table(clin, burden)
    assert t.dropped["one study (rate undefined)"] == 1


def test_non_positive_times_are_an_error(cohort):
    clin, burden, _ = cohort
    clin = clin.copy()
    clin.loc[3, "days_to_death_or_followup"] = 0
    with pytest.raises(SurvivalDataError, match="zero, negative or missing survival time"):
        build_analysis_table(clin, burden)


def test_unknown_covariate_suggests(cohort):
    clin, burden, _ = cohort
    with pytest.raises(SurvivalDataError, match="did you mean 'kps'"):
        build_analysis_table(clin, burden, config=SurvivalConfig(covariates=("kpss",)))


def test_bad_burden_row_is_named():
    clin = pd.DataFrame({"PatientID": ["A"], "days_to_death_or_followup": [10], "death": [1]})
    burden = pd.DataFrame(
        {
            "PatientID": ["A", "A"],
            "days_from_baseline": [0, "x"],
            "total_volume_mm3": [1, 2],
            "lesion_count": [1, 1],
        }
    )
    with pytest.raises(SurvivalDataError, match="line 3: column 'days_from_baseline'"):
        build_analysis_table(clin, burden)


def test_treatment_features():
    ev = [
        ClinicalEvent("A", 2, 0.0),
        ClinicalEvent("A", 2, 100.0),
        ClinicalEvent("A", 1, 50.0, description="WBRT 30 Gy"),
        ClinicalEvent("B", 2, 0.0),
        ClinicalEvent("B", 3, 5.0, study_id="S1"),
    ]
    f = treatment_features(ev).set_index("PatientID")
    assert f.loc["A", "n_treatments"] == 2 and f.loc["A", "wbrt"] == 1
    assert f.loc["B", "n_treatments"] == 1 and f.loc["B", "wbrt"] == 0
