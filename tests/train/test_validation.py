"""Validation tallies: lesion-wise counts pooled over studies, checkpoint score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metstrack.train.validation import ValidationTally, checkpoint_score, score_study


def _masks():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:4, 2:4, 2:4] = 1  # 8 mm3: small
    ref[10:16, 10:16, 10:16] = 1  # 216 mm3
    pred = np.zeros_like(ref)
    pred[2:4, 2:4, 2:4] = 1  # small one found
    pred[18, 18, 18] = 1  # a false positive; the large one is missed
    return pred, ref


def test_study_tally_counts_lesions_and_small_ones():
    pred, ref = _masks()
    t = score_study(pred, ref, spacing_mm=(1.0, 1.0, 1.0))
    assert (t.tp, t.fp, t.fn, t.small_tp, t.small_ref, t.n_scans) == (1, 1, 1, 1, 1, 1)
    assert t.dice_sum == pytest.approx(2 * 8 / (9 + 224))
    # with 3 mm slices the small lesion is 24 mm3: no longer in the < 10 mm3 stratum
    t3 = score_study(pred, ref, spacing_mm=(1.0, 1.0, 3.0))
    assert (t3.small_ref, t3.tp) == (0, 1)


def test_pooled_scores_are_ratios_of_sums():
    pred, ref = _masks()
    total = ValidationTally()
    total += score_study(pred, ref, spacing_mm=(1.0, 1.0, 1.0))
    total += score_study(ref, ref, spacing_mm=(1.0, 1.0, 1.0))  # perfect study
    s = total.scores()
    assert s["lesion_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert s["fp_per_scan"] == pytest.approx(0.5)
    assert s["small_sensitivity"] == pytest.approx(1.0)
    assert s["n_scans"] == 2
    again = ValidationTally.from_array(total.as_array())
    assert again == total


def test_empty_validation_is_nan_and_scores_zero():
    empty = np.zeros((8, 8, 8), np.uint8)
    t = score_study(empty, empty, spacing_mm=(1.0, 1.0, 1.0))
    s = t.scores()
    assert math.isnan(s["lesion_f1"]) and math.isnan(s["dice"]) and s["fp_per_scan"] == 0
    assert checkpoint_score(s, "lesion_f1") == 0.0
    assert checkpoint_score({"lesion_f1": 0.5, "dice": 0.8}, "lesion_f1") == pytest.approx(0.5008)


def test_validation_scores_record_round_trips_its_logged_form():
    from metstrack.train.validation import ValidationScores

    pred, ref = _masks()
    tally = score_study(pred, ref, spacing_mm=(1.0, 1.0, 1.0))
    scores = ValidationScores.of(tally, "lesion_f1")
    pooled = tally.scores()
    assert scores.as_dict() == {**pooled, "score": checkpoint_score(pooled, "lesion_f1")}
    assert list(scores.as_dict()) == [*pooled, "score"]  # the logged names, in order
    assert scores.get("lesion_f1") == scores.lesion_f1 == pooled["lesion_f1"]
    row = {"epoch": 2.0, "step": 12.0, **scores.as_dict()}
    again = ValidationScores.from_dict(row)
    assert again.as_dict() == row and list(again.as_dict()) == list(row)
    with pytest.raises(KeyError, match="did you mean 'lesion_f1'"):
        scores.get("lesion_f")
