"""Study evaluation: detection metrics, strata, empty cases, new lesions, agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metstrack.errors import GeometryMismatchError, LabelError
from metstrack.metrics.study import StudyOptions, evaluate_study
from metstrack.metrics.voxel import compute_hd95, compute_voxel_metrics

SP = (1.0, 1.0, 1.0)


def nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def grid(shape=(40, 30, 30)):
    return np.zeros(shape, bool)


def three_lesions():
    ref = grid()
    ref[2:4, 2:4, 2:4] = True  # 8 mm3, small stratum
    ref[10:15, 10:15, 10:15] = True  # 125 mm3
    ref[25:36, 5:16, 5:16] = True  # 1331 mm3
    return ref


def test_perfect_prediction():
    ref = three_lesions()
    ev = evaluate_study(ref, ref, spacing_mm=SP)
    d = ev.detection
    assert (d.tp, d.fp, d.fn) == (3, 0, 0)
    assert d.sensitivity == d.precision == d.f1 == d.f_beta == 1.0
    assert d.lesion_dice == 1.0 and d.lesion_hd95_mm == 0.0
    assert d.lesionwise_dice == 1.0 and d.lesionwise_hd95_mm == 0.0
    assert ev.voxel.dice == 1.0
    assert [s.n_ref for s in ev.strata] == [1, 0, 1, 1]
    assert ev.stratum("[0,10)").sensitivity == 1.0
    assert nan(ev.stratum("[10,100)").sensitivity)


def test_counts_f1_fbeta_and_penalties():
    ref = three_lesions()
    pred = ref.copy()
    pred[2:4, 2:4, 2:4] = False  # miss the small lesion
    pred[30:32, 25:27, 25:27] = True  # 8 mm3 false positive
    pred[0, 29, 29] = True  # 1 mm3 false positive
    ev = evaluate_study(pred, ref, spacing_mm=SP, options=StudyOptions(beta=2.0))
    d = ev.detection
    assert (d.tp, d.fp, d.fn, d.tp_pred) == (2, 2, 1, 2)
    assert d.sensitivity == pytest.approx(2 / 3)
    assert d.precision == pytest.approx(2 / 4)
    assert d.f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert d.f_beta == pytest.approx(5 * 2 / (5 * 2 + 4 * 1 + 2))
    assert d.lesionwise_dice == pytest.approx(2 / 5)
    assert d.lesionwise_hd95_mm == pytest.approx(3 * 374 / 5)
    small = ev.stratum("[0,10)")
    assert (small.n_ref, small.tp, small.fn, small.fp) == (1, 0, 1, 2)  # both FPs < 10 mm3
    assert small.sensitivity == 0.0 and small.dice_mean == 0.0
    assert d.count_error == 1 and d.count_abs_error == 1
    assert d.count_rel_error == pytest.approx(1 / 3)
    assert d.volume_error_mm3 == pytest.approx(-8 + 8 + 1)
    kinds = [r.kind for r in ev.lesions]
    assert kinds == ["fn", "tp", "tp", "fp", "fp"]


@pytest.mark.parametrize("mode", ["overlap", "brats"])
def test_both_empty(mode):
    ev = evaluate_study(grid(), grid(), spacing_mm=SP, options=StudyOptions(mode=mode))
    d = ev.detection
    assert (d.tp, d.fp, d.fn, d.n_ref, d.n_pred) == (0, 0, 0, 0, 0)
    for v in (d.sensitivity, d.precision, d.f1, d.f_beta, d.lesion_dice, d.lesion_hd95_mm):
        assert nan(v)
    assert nan(d.lesionwise_dice) and nan(d.lesionwise_hd95_mm)
    assert nan(d.count_rel_error) and nan(d.volume_rel_error)
    assert nan(ev.voxel.dice) and nan(ev.voxel.hd95_mm)
    assert ev.stratum("[0,10)").n_ref == 0 and nan(ev.stratum("[0,10)").sensitivity)
    assert ev.lesions == ()


@pytest.mark.parametrize("mode", ["overlap", "brats"])
def test_prediction_empty(mode):
    ev = evaluate_study(grid(), three_lesions(), spacing_mm=SP, options=StudyOptions(mode=mode))
    d = ev.detection
    assert (d.tp, d.fp, d.fn) == (0, 0, 3)
    assert d.sensitivity == 0.0 and nan(d.precision) and d.f1 == 0.0
    assert d.lesionwise_dice == 0.0 and d.lesionwise_hd95_mm == 374.0
    assert ev.voxel.dice == 0.0 and nan(ev.voxel.hd95_mm)
    assert d.count_rel_error == -1.0 and d.volume_rel_error == -1.0


@pytest.mark.parametrize("mode", ["overlap", "brats"])
def test_reference_empty(mode):
    ev = evaluate_study(three_lesions(), grid(), spacing_mm=SP, options=StudyOptions(mode=mode))
    d = ev.detection
    assert (d.tp, d.fp, d.fn) == (0, 3, 0)
    assert nan(d.sensitivity) and d.precision == 0.0 and d.f1 == 0.0
    assert d.lesionwise_dice == 0.0 and d.lesionwise_hd95_mm == 374.0
    assert [s.fp for s in ev.strata] == [1, 0, 1, 1]  # FPs binned by their own volume
    assert nan(d.count_rel_error)


def test_missing_prediction_is_all_missed():
    ev = evaluate_study(None, three_lesions(), spacing_mm=SP, study_id="S1")
    assert ev.prediction_missing
    assert ev.detection.fn == 3 and ev.detection.tp == 0


def test_single_voxel_lesions():
    ref = grid()
    ref[5, 5, 5] = True
    pred = grid()
    pred[5, 5, 5] = True
    pred[20, 20, 20] = True
    ev = evaluate_study(pred, ref, spacing_mm=(0.5, 0.5, 0.5))
    d = ev.detection
    assert (d.tp, d.fp, d.fn) == (1, 1, 0)
    assert d.lesion_dice == 1.0 and d.lesion_hd95_mm == 0.0
    assert ev.lesions[0].ref_volume_mm3 == pytest.approx(0.125)
    assert ev.lesions[0].stratum == "[0,10)"


def test_split_and_merge_in_both_modes():
    ref = grid()
    ref[5:15, 5:10, 5:10] = True
    pred = ref.copy()
    pred[9:11] = False
    over = evaluate_study(pred, ref, spacing_mm=SP)
    brats = evaluate_study(pred, ref, spacing_mm=SP, options=StudyOptions(mode="brats"))
    assert (over.detection.tp, over.detection.fp) == (1, 1)
    assert (brats.detection.tp, brats.detection.fp, brats.detection.tp_pred) == (1, 0, 2)
    assert brats.lesions[0].dice == pytest.approx(2 * 200 / (200 + 250))
    # merged: one prediction across two reference lesions 3 voxels apart
    ref2 = grid()
    ref2[5:10, 5:10, 5:10] = True
    ref2[13:18, 5:10, 5:10] = True
    pred2 = grid()
    pred2[5:18, 5:10, 5:10] = True
    over2 = evaluate_study(pred2, ref2, spacing_mm=SP)
    brats2 = evaluate_study(pred2, ref2, spacing_mm=SP, options=StudyOptions(mode="brats"))
    assert (over2.detection.tp, over2.detection.fn, over2.detection.fp) == (1, 1, 0)
    assert (brats2.detection.tp, brats2.detection.fn, brats2.detection.fp) == (2, 0, 0)


def test_lesion_hd95_matches_direct_computation(make_blobs, rng):
    ref = make_blobs(rng, (32, 32, 32), level=0.93, sigma=1.5)
    pred = make_blobs(rng, (32, 32, 32), level=0.93, sigma=1.5) | np.roll(ref, 1, axis=0)
    sp = (0.8, 1.0, 1.5)
    ev = evaluate_study(pred, ref, spacing_mm=sp)
    from metstrack.core.lesions import label_map

    pm, rm = label_map(pred), label_map(ref)
    checked = 0
    for rec in ev.lesions:
        if rec.kind != "tp":
            continue
        p = np.isin(pm.labels, rec.pred_labels)
        r = np.isin(rm.labels, rec.ref_labels)
        assert rec.hd95_mm == pytest.approx(compute_hd95(p, r, spacing_mm=sp))
        assert rec.dice == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
        checked += 1
    assert checked >= 2
    whole = compute_voxel_metrics(pred, ref, spacing_mm=sp)
    assert ev.voxel == whole


def test_anisotropic_volumes_strata_and_world_centroids():
    ref = grid()
    ref[4:6, 4:6, 4:6] = True  # 8 voxels
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    aff[:3, 3] = [100.0, -20.0, 3.0]
    ev = evaluate_study(ref, ref, affine=aff)
    rec = ev.lesions[0]
    assert rec.ref_volume_mm3 == pytest.approx(8 * 0.5)
    assert rec.centroid_mm == pytest.approx((100 + 4.5 * 0.5, -20 + 4.5 * 0.5, 3 + 4.5 * 2))
    ev2 = evaluate_study(ref, ref, spacing_mm=(2.0, 2.0, 2.0))
    assert ev2.lesions[0].stratum == "[10,100)"  # 8 voxels * 8 mm3 = 64 mm3


def test_custom_bins_keep_the_small_stratum():
    ev = evaluate_study(
        grid(), grid(), spacing_mm=SP, options=StudyOptions(volume_bins_mm3=(0, 50))
    )
    assert [s.stratum for s in ev.strata] == ["[0,10)", "[10,50)", "[50,inf)"]


def test_new_lesions_by_overlap_and_by_identity():
    prev = grid()
    prev[10:15, 10:15, 10:15] = True
    ref = three_lesions()  # the 125 mm3 lesion persists; the others are new
    pred = ref.copy()
    pred[25:36, 5:16, 5:16] = False  # miss one new lesion
    ev = evaluate_study(pred, ref, spacing_mm=SP, previous_ref=prev)
    assert ev.has_previous
    assert [r.is_new for r in ev.lesions if r.kind != "fp"] == [True, False, True]
    assert ev.detection.n_new_ref == 2 and ev.detection.new_detected == 1
    assert ev.detection.new_lesion_sensitivity == 0.5
    inst = ref.astype(np.int32)
    inst[10:15, 10:15, 10:15] = 7
    prev_inst = np.zeros_like(inst)
    prev_inst[0:3, 0:3, 0:3] = 7  # same identity elsewhere (registration moved it)
    ev2 = evaluate_study(
        pred, ref, spacing_mm=SP, ref_instances=inst, previous_ref_instances=prev_inst
    )
    assert [r.is_new for r in ev2.lesions if r.kind != "fp"] == [True, False, True]
    ev3 = evaluate_study(pred, ref, spacing_mm=SP)
    assert not ev3.has_previous and nan(ev3.detection.new_lesion_sensitivity)
    with pytest.raises(GeometryMismatchError):
        evaluate_study(pred, ref, spacing_mm=SP, previous_ref=np.zeros((3, 3, 3)))


def test_bad_inputs():
    ref = three_lesions()
    prob = ref * 0.7
    with pytest.raises(LabelError, match="probability map"):
        evaluate_study(prob, ref, spacing_mm=SP)
    with pytest.raises(ValueError, match="spacing_mm or affine"):
        evaluate_study(ref, ref)
    with pytest.raises(GeometryMismatchError, match="shape"):
        evaluate_study(ref[:-1], ref, spacing_mm=SP)
    with pytest.raises(LabelError, match="3D"):
        evaluate_study(ref[0], ref[0], spacing_mm=SP)


def test_rows_are_flat():
    ev = evaluate_study(
        three_lesions(), three_lesions(), spacing_mm=SP, patient_id="P", study_id="S"
    )
    row = ev.row()
    assert row["patient_id"] == "P" and row["[0,10)_n_ref"] == 1 and row["voxel_dice"] == 1.0
    rows = ev.lesion_rows()
    assert len(rows) == 3 and rows[0]["ref_labels"] == "1" and "centroid_x_mm" in rows[0]
