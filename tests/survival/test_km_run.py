"""Kaplan-Meier curves and the whole analysis with its outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metstrack.errors import SurvivalDataError
from metstrack.survival.config import SurvivalConfig
from metstrack.survival.km import kaplan_meier, rate_groups
from metstrack.survival.table import build_analysis_table
from metstrack.workflows.survival import run_survival


def test_groups_median_and_tertiles(rng):
    import pandas as pd

    v = pd.Series(rng.normal(size=99))
    assert rate_groups(v, "median").value_counts().to_dict() == {"low": 50, "high": 49}
    assert set(rate_groups(v, "tertiles").value_counts()) == {33}
    with pytest.raises(SurvivalDataError, match="valid: median, tertiles"):
        rate_groups(v, "quartiles")


def test_kaplan_meier_matches_a_hand_computation():
    import pandas as pd

    # low group: times 1,2,3 all deaths -> S = 2/3, 1/3, 0 ; high: 1 death at 5, censor 6
    f = pd.DataFrame(
        {"time_days": [1, 2, 3, 5, 6], "death": [1, 1, 1, 1, 0], "r": [0.0, 0.1, 0.2, 5.0, 6.0]}
    )
    km = kaplan_meier(f, group_col="r", how="median")
    low = km.curves[km.curves["group"] == "low"].set_index("time_days")["survival"]
    assert low.loc[1.0] == pytest.approx(2 / 3) and low.loc[3.0] == pytest.approx(0.0)
    assert km.median_days["low"] == 2.0
    assert km.at_risk.set_index("group").loc["low", "0"] == 3


def test_run_survival_writes_everything(tmp_path, cohort):
    clin, burden, _ = cohort
    res = run_survival(
        clin, burden, tmp_path, config=SurvivalConfig(landmark_days=90, groups="tertiles")
    )
    for name in (
        "analysis_table.csv",
        "cox_summary.csv",
        "ph_test.csv",
        "landmark_cox_summary.csv",
        "time_varying_cox_summary.csv",
        "km_curves.csv",
        "km_rate_of_change.png",
        "km_rate_of_change.svg",
        "summary.json",
        "config.json",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_patients"] == len(clin)
    assert s["headline"]["hr_rate_volume_per_cm3_month"] == pytest.approx(
        res.cox.hazard_ratio("rate_volume_cm3_per_month")[0]
    )
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["config"]["landmark_days"] == 90
    assert set(res.km.groups) == {"low", "mid", "high"}
    t = build_analysis_table(clin, burden)
    assert np.isfinite(res.km.logrank_p) and res.table.n_patients == t.n_patients
