"""The default one-to-one matching maximises total overlap; "pairs" stays available."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.core.lesions import label_map
from metstrack.metrics.matching import MatchingOptions, match_lesions
from metstrack.metrics.study import StudyOptions, evaluate_study


def _sliver_case() -> tuple[np.ndarray, np.ndarray]:
    """Prediction A covers most of reference lesion 1 and grazes lesion 2; B grazes lesion 1."""
    ref = np.zeros((40, 12, 12), bool)
    ref[2:12, 2:10, 2:10] = True  # lesion 1: 640 voxels
    ref[14:24, 2:10, 2:10] = True  # lesion 2: 640 voxels
    pred = np.zeros_like(ref)
    pred[3:15, 2:8, 2:10] = True  # A: IoU 0.55 with lesion 1, 0.04 with lesion 2
    pred[4:6, 9, 4:6] = True  # B: 4 voxels of lesion 1 (IoU 0.006), apart from A
    return pred, ref


def test_a_sliver_never_displaces_the_large_overlap():
    pred, ref = _sliver_case()
    pm, rm = label_map(pred), label_map(ref)
    assert (pm.n, rm.n) == (2, 2)
    best = match_lesions(pm, rm, voxel_volume_mm3=1.0)
    pairs = match_lesions(pm, rm, voxel_volume_mm3=1.0, options=MatchingOptions(objective="pairs"))
    a = int(pm.labels[5, 5, 5])
    assert best.unit_pred == ((a,), ())  # A on lesion 1, lesion 2 missed, B a false positive
    assert best.unit_score[0] > 0.5
    assert len(pairs.matched_pred) == 2  # two slivers counted as detections
    assert max(s for s in pairs.unit_score if s == s) < 0.2


def test_evaluate_study_default_and_pairs_mode():
    pred, ref = _sliver_case()
    d = evaluate_study(pred, ref, spacing_mm=(1, 1, 1)).detection
    p = evaluate_study(
        pred, ref, spacing_mm=(1, 1, 1), options=StudyOptions(match_objective="pairs")
    ).detection
    assert (d.tp, d.fn, d.fp) == (1, 1, 1)
    assert (p.tp, p.fn, p.fp) == (2, 0, 0)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="did you mean 'pairs'"):
        MatchingOptions(objective="pair")
