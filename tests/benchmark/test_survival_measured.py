"""benchmarks/survival_measured.py: the regression-dilution figures it prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "survival_measured.py"


def _module():
    spec = importlib.util.spec_from_file_location("survival_measured", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table(ids, rates) -> pd.DataFrame:
    return pd.DataFrame({"PatientID": ids, "rate_volume_cm3_per_month": rates})


def test_reliability_ratio_recovers_classical_measurement_error() -> None:
    rng = np.random.default_rng(0)
    ids = [f"P{i:04d}" for i in range(4000)]
    true = rng.normal(0, 1.0, len(ids))
    measured = true + rng.normal(0, 1.0, len(ids))  # error variance = true variance: lambda 0.5
    d = _module().dilution(_table(ids, measured), _table(ids, true))
    assert d["n_patients"] == 4000
    assert d["lambda"] == pytest.approx(0.5, abs=0.05)
    assert d["correlation"] == pytest.approx(np.sqrt(0.5), abs=0.05)
    assert d["sd_measured"] > d["sd_true"]


def test_patients_are_paired_by_id_not_by_row() -> None:
    d = _module().dilution(
        _table(["A", "B", "C"], [1.0, 2.0, 3.0]), _table(["C", "A", "B"], [3.0, 1.0, 2.0])
    )
    assert d["lambda"] == pytest.approx(1.0) and d["mean_error_cm3_per_month"] == pytest.approx(0.0)
