"""Changes between consecutive studies and new-lesion sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metstrack.metrics.longitudinal import compute_longitudinal
from metstrack.metrics.study import evaluate_study


def cube(m, x):
    m[x : x + 3, 5:8, 5:8] = True


def test_changes_and_new_lesions():
    shape = (40, 12, 12)
    refs, preds = [], []
    r0 = np.zeros(shape, bool)
    cube(r0, 2)
    r1 = r0.copy()
    cube(r1, 10)  # new lesion
    cube(r1, 20)  # new lesion
    p0 = r0.copy()
    p1 = r0.copy()
    cube(p1, 10)  # detects one of the two new lesions
    cube(p1, 30)  # plus a false positive
    refs, preds = [r0, r1], [p0, p1]
    evs = [
        evaluate_study(
            preds[i],
            refs[i],
            spacing_mm=(1, 1, 2),
            patient_id="P1",
            study_id=f"S{i}",
            previous_ref=refs[i - 1] if i else None,
        )
        for i in range(2)
    ]
    # an interleaved second patient with a single study yields no pair
    other = evaluate_study(r0, r0, spacing_mm=(1, 1, 1), patient_id="P2", study_id="X")
    (ch,) = compute_longitudinal([evs[0], other, evs[1]])
    assert (ch.patient_id, ch.previous_study_id, ch.study_id) == ("P1", "S0", "S1")
    assert ch.ref_count_change == 2 and ch.pred_count_change == 2 and ch.count_change_error == 0
    vol = 27 * 2.0
    assert ch.ref_volume_change_mm3 == pytest.approx(2 * vol)
    assert ch.volume_change_error_mm3 == pytest.approx(0.0)
    assert ch.n_new_ref == 2 and ch.new_detected == 1 and ch.new_lesion_sensitivity == 0.5


def test_unknown_new_status_is_nan():
    m = np.zeros((10, 10, 10), bool)
    m[2:4, 2:4, 2:4] = True
    evs = [evaluate_study(m, m, spacing_mm=(1, 1, 1), patient_id="P", study_id=s) for s in "AB"]
    (ch,) = compute_longitudinal(evs)
    assert not ch.new_status_known and math.isnan(ch.new_lesion_sensitivity)
    assert ch.count_change_error == 0
