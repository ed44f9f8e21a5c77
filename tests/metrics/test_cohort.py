"""Cohort aggregation: pooled rates, defined counts, seeded patient bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metstrack.metrics.cohort import headline_metrics, summarize_cohort
from metstrack.metrics.longitudinal import compute_longitudinal
from metstrack.metrics.study import evaluate_study


def study(rng, pid, sid, n_lesions, miss, n_fp):
    ref = np.zeros((30, 30, 10), bool)
    pred = np.zeros_like(ref)
    for i in range(n_lesions):
        x = 2 + 5 * (i % 5)
        y = 2 + 5 * (i // 5)
        ref[x : x + 2, y : y + 2, 2:4] = True  # 8 mm3
        if i >= miss:
            pred[x : x + 2, y : y + 2, 2:4] = True
    for j in range(n_fp):
        pred[2 + 5 * j, 28, 7] = True
    return evaluate_study(pred, ref, spacing_mm=(1, 1, 1), patient_id=pid, study_id=sid)


@pytest.fixture
def cohort(rng):
    return [
        study(rng, "A", "a1", 4, 1, 0),
        study(rng, "A", "a2", 4, 0, 1),
        study(rng, "B", "b1", 2, 2, 2),
        study(rng, "C", "c1", 0, 0, 0),
        study(rng, "D", "d1", 5, 1, 1),
    ]


def test_pooled_and_mean_estimates(cohort):
    s = summarize_cohort(cohort, n_bootstrap=0)
    tp, fn, fp = 3 + 4 + 0 + 0 + 4, 1 + 0 + 2 + 0 + 1, 0 + 1 + 2 + 0 + 1
    assert s.metric("lesion_sensitivity").value == pytest.approx(tp / (tp + fn))
    assert s.metric("lesion_f1").value == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s.metric("fp_per_scan").value == pytest.approx(fp / 5)
    assert s.metric("sensitivity_[0,10)").value == pytest.approx(tp / (tp + fn))
    dice = [e.voxel.dice for e in cohort if not math.isnan(e.voxel.dice)]
    assert s.metric("dice").value == pytest.approx(np.mean(dice))
    assert s.metric("dice").n_defined == 4  # the empty study has no Dice
    assert s.metric("lesion_sensitivity").n_defined == 4
    assert math.isnan(s.metric("dice").ci_low)
    h = s.headline
    assert h.lesion_f1 == s.metric("lesion_f1").value
    assert h.small_lesion_sensitivity == pytest.approx(tp / (tp + fn))
    assert h.fp_per_scan == pytest.approx(fp / 5) and h.n_studies == 5
    assert headline_metrics(cohort) == h
    assert (s.n_patients, s.n_studies, s.n_missing_predictions) == (4, 5, 0)


def test_bootstrap_is_seeded_and_brackets_the_estimate(cohort):
    a = summarize_cohort(cohort, n_bootstrap=300, seed=7)
    b = summarize_cohort(cohort, n_bootstrap=300, seed=7)
    c = summarize_cohort(cohort, n_bootstrap=300, seed=8)
    assert a == b
    assert a.metrics != c.metrics
    m = a.metric("lesion_f1")
    assert m.ci_low <= m.value <= m.ci_high and m.ci_low < m.ci_high


def test_single_patient_bootstrap_is_degenerate(cohort):
    s = summarize_cohort(cohort[:2], n_bootstrap=50, seed=0)
    m = s.metric("lesion_sensitivity")
    assert m.ci_low == pytest.approx(m.value) and m.ci_high == pytest.approx(m.value)


def test_longitudinal_pairs_are_summarised(cohort):
    pairs = compute_longitudinal(cohort)
    s = summarize_cohort(cohort, pairs=pairs, n_bootstrap=0)
    assert len(pairs) == 1 and s.metric("count_change_abs_error").n_defined == 1
    assert s.metric("count_change_error").value == pairs[0].count_change_error


def test_empty_cohort():
    s = summarize_cohort([], n_bootstrap=10)
    assert s.n_studies == 0 and math.isnan(s.headline.lesion_f1)
    assert s.metric("sensitivity_[0,10)").n_defined == 0
