"""Tracking accuracy measures on hand-made tracked and true instance maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metstrack.errors import GeometryMismatchError
from metstrack.tracking.accuracy import TrackingAccuracy, combine_accuracy, tracking_accuracy
from metstrack.tracking.tracker import track_patient


def _maps(tk, ids_per_study, centres):
    """Instance maps where lesion i sits at centres[i] with the given ID (0 = absent)."""
    out = []
    for ids in ids_per_study:
        m = np.zeros(tk.SHAPE, dtype=np.int32)
        for c, lid in zip(centres, ids, strict=True):
            if lid:
                m[tk.ball(c, 2)] = lid
        out.append(m)
    return out


CENTRES = [(6, 6, 6), (20, 20, 20), (6, 24, 12)]


def test_perfect_tracking(tk):
    truth = _maps(tk, [(1, 2, 0), (1, 2, 3), (1, 0, 3)], CENTRES)
    pred = _maps(tk, [(7, 8, 0), (7, 8, 9), (7, 0, 9)], CENTRES)  # IDs need not be equal
    acc = tracking_accuracy(pred, truth)
    assert acc.n_true_lesions == 3 and acc.n_observations == 7
    assert acc.n_correspondences == 4  # 1: 2 links, 2: 1, 3: 1
    assert acc.link_accuracy == 1.0 and acc.identity_switch_rate == 0.0
    assert acc.link_precision == 1.0 and acc.n_false_merges == 0


def test_identity_switch_and_wrong_link(tk):
    truth = _maps(tk, [(1, 2, 0), (1, 2, 0), (1, 2, 0)], CENTRES)
    pred = _maps(tk, [(1, 2, 0), (5, 2, 0), (5, 2, 0)], CENTRES)  # lesion 1 re-IDed once
    acc = tracking_accuracy(pred, truth)
    assert acc.n_correspondences == 4 and acc.n_correct_links == 3
    assert acc.n_identity_switches == 1
    assert acc.link_accuracy == pytest.approx(0.75) and acc.identity_switch_rate == 0.25


def test_missed_observation_breaks_links_but_not_identity(tk):
    truth = _maps(tk, [(1, 0, 0), (1, 0, 0), (1, 0, 0)], CENTRES)
    pred = _maps(tk, [(4, 0, 0), (0, 0, 0), (4, 0, 0)], CENTRES)
    acc = tracking_accuracy(pred, truth)
    assert acc.n_missed_observations == 1
    assert acc.n_correct_links == 0 and acc.n_identity_switches == 0


def test_new_lesion_given_old_id_lowers_precision(tk):
    truth = _maps(tk, [(1, 0, 0), (0, 2, 0)], CENTRES)
    pred = _maps(tk, [(1, 0, 0), (0, 1, 0)], CENTRES)
    acc = tracking_accuracy(pred, truth)
    assert acc.n_correspondences == 0 and math.isnan(acc.link_accuracy)
    assert acc.n_pred_correspondences == 1 and acc.link_precision == 0.0


def test_false_merge_counted(tk):
    truth = [np.zeros(tk.SHAPE, np.int32)]
    truth[0][2:6, 2:6, 2:6] = 1
    truth[0][6:10, 2:6, 2:6] = 2
    pred = [(truth[0] > 0).astype(np.int32)]
    assert tracking_accuracy(pred, truth).n_false_merges == 1


def test_tracker_on_its_own_truth_is_perfect(tk):
    truth = _maps(tk, [(1, 2, 0), (1, 2, 3), (1, 0, 3), (1, 2, 3)], CENTRES)
    masks = [tk.mask(m > 0) for m in truth]
    res = track_patient(masks, [0, 30, 60, 90])
    acc = tracking_accuracy(res.tracked_maps, truth)
    assert acc.link_accuracy == 1.0 and acc.n_identity_switches == 0


def test_combine_and_errors(tk):
    a = TrackingAccuracy(n_correspondences=10, n_correct_links=9, n_identity_switches=1)
    b = TrackingAccuracy(n_correspondences=30, n_correct_links=30)
    c = combine_accuracy([a, b])
    assert c.link_accuracy == pytest.approx(39 / 40) and c.identity_switch_rate == 1 / 40
    assert c.as_dict()["n_correspondences"] == 40
    with pytest.raises(GeometryMismatchError, match="2 tracked maps but 1"):
        tracking_accuracy([np.zeros((4, 4, 4))] * 2, [np.zeros((4, 4, 4))])
    with pytest.raises(GeometryMismatchError, match="shape"):
        tracking_accuracy([np.zeros((4, 4, 4))], [np.zeros((4, 4, 5))])
