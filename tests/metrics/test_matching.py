"""Lesion matching in both modes: split, merged, touching, near-miss, Hungarian optimality."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.core.lesions import label_map
from metstrack.metrics.matching import MatchingOptions, match_lesions, pair_overlaps


def match(pred, ref, **kw):
    return match_lesions(
        label_map(pred), label_map(ref), options=MatchingOptions(**kw), voxel_volume_mm3=1.0
    )


def empty(shape=(30, 20, 20)):
    return np.zeros(shape, bool)


def split_case():
    ref = empty()
    ref[5:15, 5:10, 5:10] = True
    pred = ref.copy()
    pred[9:11] = False  # cut in two along x
    return pred, ref


def merged_case():
    ref = empty()
    ref[5:10, 5:10, 5:10] = True
    ref[13:18, 5:10, 5:10] = True  # gap of 3 voxels: not merged by a 1-voxel dilation
    pred = empty()
    pred[5:18, 5:10, 5:10] = True
    return pred, ref


def test_split_lesion_overlap_mode_gives_one_fp():
    m = match(*split_case())
    assert m.ref_units == ((1,),) and len(m.unit_pred[0]) == 1
    assert len(m.false_positive_pred) == 1


def test_split_lesion_brats_mode_merges_predictions():
    m = match(*split_case(), mode="brats")
    assert m.unit_pred == ((1, 2),)
    assert m.false_positive_pred == ()
    assert m.unit_intersection_voxels == (8 * 25,)


def test_merged_prediction_overlap_mode_misses_one():
    m = match(*merged_case())
    assert sum(bool(p) for p in m.unit_pred) == 1
    assert m.false_positive_pred == ()


def test_merged_prediction_brats_mode_detects_both():
    m = match(*merged_case(), mode="brats")
    assert m.ref_units == ((1,), (2,))
    assert m.unit_pred == ((1,), (1,))


def test_brats_merges_reference_lesions_whose_dilations_touch():
    ref = empty()
    ref[5:8, 5:8, 5:8] = True
    ref[10:13, 5:8, 5:8] = True  # gap of 2: dilations (1 voxel each) touch
    m = match(empty(), ref, mode="brats")
    assert m.ref_units == ((1, 2),)
    m0 = match(empty(), ref, mode="brats", dilation_voxels=0)
    assert m0.ref_units == ((1,), (2,))


def test_near_miss_counts_in_brats_only():
    ref = empty()
    ref[5:8, 5:8, 5:8] = True
    pred = empty()
    pred[8:10, 5:8, 5:8] = True  # adjacent, no shared voxel: inside the dilated reference
    over = match(pred, ref)
    assert over.unit_pred == ((),) and over.false_positive_pred == (1,)
    brats = match(pred, ref, mode="brats")
    assert brats.unit_pred == ((1,),) and brats.unit_intersection_voxels == (0,)


def test_min_volume_ignores_small_reference_lesions_but_not_as_fp():
    ref = empty()
    ref[3, 3, 3] = True  # 1 voxel = 1 mm3
    ref[10:13, 10:13, 10:13] = True
    pred = ref.copy()
    m = match(pred, ref, mode="brats", min_ref_volume_mm3=2.0)
    assert m.unit_ignored == (True, False)
    assert m.false_positive_pred == ()
    assert match(pred, ref, mode="brats").unit_ignored == (False, False)


def test_touching_lesions_depend_on_connectivity():
    ref = empty()
    ref[5, 5, 5] = True
    ref[6, 6, 6] = True  # corner contact only
    assert label_map(ref).n == 1
    assert label_map(ref, connectivity=6).n == 2
    assert label_map(ref, connectivity=18).n == 2


def test_pairs_objective_maximises_number_of_matches():
    # p1 overlaps r1 most (IoU 7/13) and r2 a little; p2 overlaps only r1. The default
    # max-total-IoU assignment keeps p1-r1 alone; objective "pairs" has two pairs.
    ref = empty()
    ref[2:12, 2:6, 2:6] = True  # r1
    ref[14:16, 2:6, 2:6] = True  # r2
    pred = empty()
    pred[5:15, 2:6, 2:6] = True  # p1
    pred[2:4, 2:6, 2:6] = True  # p2
    pm, rm = label_map(pred), label_map(ref)
    assert pm.n == 2 and rm.n == 2
    m = match_lesions(pm, rm, voxel_volume_mm3=1.0, options=MatchingOptions(objective="pairs"))
    assert all(m.unit_pred) and m.false_positive_pred == ()
    assert m.unit_score[0] == pytest.approx(2 / 10)  # r1 matched to p2
    best = match_lesions(pm, rm, voxel_volume_mm3=1.0)
    assert best.unit_score[0] == pytest.approx(7 / 13) and best.unit_pred[1] == ()


def test_threshold_and_criterion():
    ref = empty()
    ref[5:7, 5:7, 5:7] = True  # 8 voxels
    pred = empty()
    pred[3:9, 3:9, 3:9] = True  # 216 voxels covering ref: IoU 8/216, IoR 1
    assert match(pred, ref, threshold=0.5).unit_pred == ((),)
    assert match(pred, ref, threshold=0.5, criterion="ior").unit_pred == ((1,),)
    assert match(pred, ref, threshold=0.0).unit_pred == ((1,),)


def test_bad_options_suggest():
    with pytest.raises(ValueError, match="did you mean 'brats'"):
        MatchingOptions(mode="brat")
    with pytest.raises(ValueError, match="threshold"):
        MatchingOptions(threshold=1.5)


def test_pair_overlaps_match_brute_force(rng):
    pl = rng.integers(0, 6, size=(12, 12, 12)).astype(np.uint32)
    rl = rng.integers(0, 4, size=(12, 12, 12)).astype(np.uint32)
    got = pair_overlaps(label_map(None, labels=pl), label_map(None, labels=rl))
    want = {
        (p, r): int(((pl == p) & (rl == r)).sum())
        for p in range(1, 6)
        for r in range(1, 4)
        if ((pl == p) & (rl == r)).any()
    }
    assert got == want


def official_brats(pred, ref, dil, min_vol, spacing):
    """The BraTS-METS 2023 lesion-wise procedure written out the slow way (full-volume
    masks per lesion), following the steps of the official evaluation script."""
    import cc3d
    from scipy import ndimage

    from metstrack.metrics.voxel import compute_hd95

    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc = cc3d.connected_components(ref, connectivity=26)
    pred_cc = cc3d.connected_components(pred, connectivity=26)
    dil_cc = cc3d.connected_components(
        ndimage.binary_dilation(ref, structure=struct, iterations=dil), connectivity=26
    )
    combined = np.zeros_like(gt_cc)
    for comp in range(1, dil_cc.max() + 1):
        combined[(dil_cc == comp) & (gt_cc > 0)] = comp
    tp_pred, rows = [], []
    for comp in range(1, combined.max() + 1):
        g = combined == comp
        if not g.any():
            continue
        gd = ndimage.binary_dilation(g, structure=struct, iterations=dil)
        hits = [c for c in np.unique(pred_cc[gd]) if c]
        tp_pred += hits
        p = np.isin(pred_cc, hits)
        dice = 2 * (p & g).sum() / (p.sum() + g.sum())
        hd = compute_hd95(p, g, spacing_mm=spacing) if hits else 374.0
        rows.append((g.sum() * np.prod(spacing), bool(hits), dice, hd))
    fp = len([c for c in np.unique(pred_cc) if c and c not in tp_pred])
    kept = [r for r in rows if r[0] > min_vol]
    n = len(kept) + fp
    return {
        "tp": sum(r[1] for r in kept),
        "fn": sum(not r[1] for r in kept),
        "fp": fp,
        "dice": sum(r[2] for r in kept) / n if n else float("nan"),
        "hd": (sum(r[3] for r in kept) + 374.0 * fp) / n if n else float("nan"),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_brats_mode_agrees_with_the_official_procedure(seed):
    from metstrack.metrics.study import StudyOptions, evaluate_study

    rng = np.random.default_rng(seed)
    shape = (30, 26, 22)
    g = np.indices(shape)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(8):  # balls of radius 0.5-3 voxels; some touch or nearly touch
        c = rng.integers(3, np.array(shape) - 3)
        r = rng.uniform(0.5, 3.0)
        ref |= ((g - c[:, None, None, None]) ** 2).sum(0) <= r * r
        if rng.random() < 0.8:  # detected, displaced by up to 2 voxels, resized
            c2 = c + rng.integers(-2, 3, 3)
            r2 = r * rng.uniform(0.6, 1.3)
            pred |= ((g - c2[:, None, None, None]) ** 2).sum(0) <= r2 * r2
    pred |= rng.random(shape) > 0.9997  # a few single-voxel false positives
    sp = (1.0, 1.0, 1.5)
    want = official_brats(pred, ref, 1, 2.0, sp)
    ev = evaluate_study(
        pred, ref, spacing_mm=sp, options=StudyOptions(mode="brats", min_ref_volume_mm3=2.0)
    )
    d = ev.detection
    assert (d.tp, d.fn, d.fp) == (want["tp"], want["fn"], want["fp"])
    assert d.lesionwise_dice == pytest.approx(want["dice"])
    assert d.lesionwise_hd95_mm == pytest.approx(want["hd"])
