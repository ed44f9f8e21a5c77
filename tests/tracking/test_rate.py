"""Monthly rate of change against hand-computed slopes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from metstrack.core.rate import (
    LOG_EPSILON_CM3,
    monthly_count_rate_of_change,
    monthly_rate_of_change,
)
from metstrack.errors import ConfigError
from metstrack.tracking.trajectory import patient_rates
from metstrack.types import DAYS_PER_MONTH


def test_two_studies_slope_is_difference_over_months():
    # 1 cm3 -> 4 cm3 over 3 months: 1 cm3/month
    r = monthly_rate_of_change([0.0, 3 * DAYS_PER_MONTH], [1000.0, 4000.0])
    assert r.defined and r.value == pytest.approx(1.0)
    assert r.units == "cm3/month" and r.n_studies == 2 and r.span_months == pytest.approx(3.0)


def test_three_studies_ols_by_hand():
    # months 0, 1, 3; volumes 1, 2, 2 cm3
    # mean x = 4/3, mean y = 5/3; Sxy = (-4/3)(-2/3) + (-1/3)(1/3) + (5/3)(1/3) = 12/9
    # Sxx = 16/9 + 1/9 + 25/9 = 42/9 -> slope = 12/42 = 2/7
    days = np.array([0.0, 1.0, 3.0]) * DAYS_PER_MONTH
    r = monthly_rate_of_change(days, [1000.0, 2000.0, 2000.0])
    assert r.value == pytest.approx(2.0 / 7.0)
    fl = monthly_rate_of_change(days, [1000.0, 2000.0, 2000.0], method="first_last")
    assert fl.value == pytest.approx(1.0 / 3.0)


def test_order_of_studies_does_not_matter():
    days = np.array([0.0, 1.0, 3.0]) * DAYS_PER_MONTH
    a = monthly_rate_of_change(days, [1000.0, 2000.0, 2000.0])
    b = monthly_rate_of_change(days[::-1], [2000.0, 2000.0, 1000.0])
    assert a.value == pytest.approx(b.value)


def test_log_method_uses_documented_epsilon():
    days = np.array([0.0, 2.0]) * DAYS_PER_MONTH
    r = monthly_rate_of_change(days, [0.0, 999.0], method="log_ols")
    expected = (math.log(0.999 + LOG_EPSILON_CM3) - math.log(LOG_EPSILON_CM3)) / 2.0
    assert r.value == pytest.approx(expected)
    assert r.units == "ln(cm3)/month"


def test_one_study_and_same_day_are_undefined_with_reason():
    r = monthly_rate_of_change([0.0], [1500.0])
    assert not r.defined and math.isnan(r.value) and "one study" in r.reason
    r = monthly_rate_of_change([10.0, 10.0], [1500.0, 1800.0])
    assert not r.defined and math.isnan(r.value) and "same day" in r.reason


def test_count_rate_and_bad_inputs():
    r = monthly_count_rate_of_change([0.0, DAYS_PER_MONTH, 2 * DAYS_PER_MONTH], [2, 3, 6])
    assert r.value == pytest.approx(2.0) and r.units == "lesions/month"
    with pytest.raises(ConfigError, match="did you mean 'ols'"):
        monthly_rate_of_change([0, 1], [1, 2], method="olss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        monthly_rate_of_change([0, 1], [1])
    with pytest.raises(ValueError, match="non-negative"):
        monthly_rate_of_change([0, 1], [1, -2])


def test_patient_rates_table_marks_one_study_patients():
    burden = pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B"],
            "days_from_baseline": [0.0, DAYS_PER_MONTH, 2 * DAYS_PER_MONTH, 0.0],
            "total_volume_mm3": [500.0, 1000.0, 1500.0, 800.0],
            "lesion_count": [1, 1, 4, 2],
        }
    )
    rates = patient_rates(burden).set_index("patient_id")
    assert rates.loc["A", "rate_volume_cm3_per_month"] == pytest.approx(0.5)
    assert rates.loc["A", "rate_count_per_month"] == pytest.approx(1.5)
    assert bool(rates.loc["A", "defined"]) and rates.loc["A", "n_studies"] == 3
    assert not bool(rates.loc["B", "defined"])
    assert math.isnan(rates.loc["B", "rate_volume_cm3_per_month"])
    assert "one study" in rates.loc["B", "reason"]


def test_same_definition_as_the_synthetic_survival_model(rng):
    synth = pytest.importorskip("metstrack.synth.timeline")
    for n in (2, 3, 5, 8):
        days = np.sort(rng.uniform(0, 700, size=n))
        vols = rng.uniform(0, 5000, size=n)
        ours = monthly_rate_of_change(days, vols).value
        assert ours == pytest.approx(synth.least_squares_rate_cm3_per_month(days, vols))
