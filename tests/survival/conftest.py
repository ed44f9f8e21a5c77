"""Hand-made survival cohorts with a planted hazard ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def make_cohort(n: int = 400, *, seed: int = 0, log_hr: float = np.log(1.27), n_scans: int = 3):
    """Clinical and burden tables whose total volume is linear in months (exact OLS rate)."""
    rng = np.random.default_rng(seed)
    rate = rng.normal(0.0, 1.0, n)  # cm3/month
    age = rng.normal(62, 10, n)
    lam = 0.002 * np.exp(log_hr * rate + 0.02 * (age - 62))
    t = rng.exponential(1 / lam)
    c = rng.uniform(300, 1500, n)
    time = np.maximum(np.minimum(t, c), 1.0)
    death = t < c
    ids = [f"P{i:04d}" for i in range(n)]
    clin = pd.DataFrame(
        {
            "PatientID": ids,
            "age_years": age,
            "sex": rng.choice(["F", "M"], n),
            "primary_histology": rng.choice(["lung", "breast", "melanoma"], n, p=[0.5, 0.3, 0.2]),
            "kps": rng.choice([60, 70, 80, 90, 100], n).astype(float),
            "extracranial_disease": rng.integers(0, 2, n).astype(bool),
            "death": death,
            "days_to_death_or_followup": time,
            "first_srs_days_from_baseline_scan": 10.0,
        }
    )
    rows = []
    for i in range(n):
        for d in np.arange(n_scans) * 60.0:
            vol_cm3 = 20.0 + rate[i] * d / 30.4375
            rows.append(
                {
                    "PatientID": ids[i],
                    "StudyID": f"{ids[i]}-S{int(d)}",
                    "days_from_baseline": d,
                    "total_volume_mm3": vol_cm3 * 1000.0,
                    "lesion_count": 2 + int(d // 60),
                }
            )
    return clin, pd.DataFrame(rows), rate


@pytest.fixture
def make_survival_cohort():
    """The cohort factory itself, for tests that need other sizes or seeds."""
    return make_cohort


@pytest.fixture
def cohort():
    """A 400-patient cohort (clinical, burden, true rates)."""
    return make_cohort()
