"""FROC: per-threshold detections, pooled curves, operating points, paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from metstrack.metrics.froc import (
    ScanFROC,
    at_operating_point,
    froc_curve,
    operating_threshold,
    paired_bootstrap_difference,
    point_at,
    scan_froc,
    stratum_new,
    stratum_volume,
)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Three reference lesions and one vessel-like false positive, with known peaks."""
    prob = np.zeros((20, 20, 20), np.float32)
    ref = np.zeros((20, 20, 20), np.int32)
    ref[2:5, 2:5, 2:5] = 1  # 27 voxels, found with peak 0.9
    prob[2:5, 2:5, 2:5] = 0.6
    prob[3, 3, 3] = 0.9
    ref[10:12, 10:12, 10:12] = 3  # 8 voxels (value 3: values need not be contiguous), peak 0.4
    prob[10:12, 10:12, 10] = 0.4
    ref[15, 15, 15] = 4  # 1 voxel, never found
    prob[0:2, 18, 18] = 0.95  # false positive, 2 voxels
    return prob, ref


def test_detections_and_false_positives_per_threshold() -> None:
    prob, ref = _scene()
    s = scan_froc(prob, ref, voxel_volume_mm3=1.0, patient_id="P1", thresholds=(0.3, 0.5, 0.92))
    np.testing.assert_array_equal(s.ref_volumes_mm3, [27, 8, 1])
    np.testing.assert_array_equal(
        s.detected, [[True, True, False], [True, False, False], [False, False, False]]
    )
    np.testing.assert_array_equal(s.false_positives, [1, 1, 1])


def test_size_filter_drops_small_components_before_counting() -> None:
    prob, ref = _scene()
    s = scan_froc(
        prob, ref, voxel_volume_mm3=1.0, patient_id="P1", thresholds=(0.3,), min_volume_mm3=3
    )
    # the 2-voxel false positive is gone; the 4-voxel slab on lesion 3 stays
    assert s.false_positives.tolist() == [0] and s.detected[0].tolist() == [True, True, False]
    s = scan_froc(
        prob, ref, voxel_volume_mm3=1.0, patient_id="P1", thresholds=(0.3,), min_volume_mm3=5
    )
    assert s.detected[0].tolist() == [True, False, False]


def _slow_reference(prob, ref, thresholds, min_voxels, min_iou):
    """Straightforward per-component loops with scipy's labelling (26-connected)."""
    values = sorted(v for v in np.unique(ref) if v)
    det, fps = [], []
    for t in thresholds:
        lab, n = ndimage.label(prob >= t, structure=np.ones((3, 3, 3)))
        row = [False] * len(values)
        fp = 0
        for c in range(1, n + 1):
            comp = lab == c
            if comp.sum() < max(min_voxels, 1):
                continue
            under = set(np.unique(ref[comp]).tolist()) - {0}
            hits = [
                v for v in under if (comp & (ref == v)).sum() / (comp | (ref == v)).sum() >= min_iou
            ]
            for v in hits:
                row[values.index(v)] = True
            fp += not hits
        det.append(row)
        fps.append(fp)
    return np.array(det, bool).reshape(len(thresholds), len(values)), np.array(fps)


@pytest.mark.parametrize(("seed", "min_iou"), [(0, 0.0), (1, 0.1), (2, 0.3), (3, 0.1)])
def test_matches_a_slow_reference_on_random_scenes(seed: int, min_iou: float) -> None:
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(rng.random((24, 24, 24)), 1.5).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    ref, _ = ndimage.label(ndimage.gaussian_filter(rng.random((24, 24, 24)), 1.2) > 0.56)
    th = (0.3, 0.5, 0.6, 0.7, 0.8)
    s = scan_froc(
        prob, ref, voxel_volume_mm3=0.5, patient_id="P", thresholds=th, min_volume_mm3=1.5,
        min_iou=min_iou,
    )  # fmt: skip
    det, fps = _slow_reference(prob, ref, th, 3, min_iou)
    assert ref.max() > 3 and fps.sum() > 0 and det.any() and not det.all()
    np.testing.assert_array_equal(s.detected, det)
    np.testing.assert_array_equal(s.false_positives, fps)


def test_one_component_over_the_whole_brain_detects_nothing() -> None:
    """The any-overlap rule's failure: at a low threshold one blob 'finds' every lesion."""
    ref = np.zeros((40, 40, 40), np.int32)
    for k, c in enumerate((8, 20, 32), start=1):
        ref[c - 1 : c + 1, 20, 20] = k  # three 2-voxel lesions
    prob = np.full(ref.shape, 0.01, np.float32)
    prob[2:38, 2:38, 2:38] = 0.2  # the "brain": one component of 46,656 voxels
    prob[ref > 0] = 0.9
    prob[19:22, 19:22, 19:22] = np.maximum(prob[19:22, 19:22, 19:22], 0.9)  # lesion 2 oversized
    th = (0.1, 0.5)
    loose = scan_froc(prob, ref, voxel_volume_mm3=1.0, patient_id="P", thresholds=th, min_iou=0.0)
    assert loose.detected[0].all() and loose.false_positives[0] == 0
    s = scan_froc(prob, ref, voxel_volume_mm3=1.0, patient_id="P", thresholds=th)
    assert s.detected[0].tolist() == [False, False, False] and s.false_positives[0] == 1
    # at 0.5: lesions 1 and 3 exactly, lesion 2 inside a 27-voxel blob (IoU 2/27 < 0.1)
    assert s.detected[1].tolist() == [True, False, True] and s.false_positives[1] == 1
    with pytest.raises(ValueError, match="min_iou"):
        scan_froc(prob, ref, voxel_volume_mm3=1.0, patient_id="P", min_iou=1.5)


def test_pooled_curve_strata_and_operating_point() -> None:
    prob, ref = _scene()
    th = (0.3, 0.5, 0.92, 0.99)
    a = scan_froc(
        prob, ref, voxel_volume_mm3=1.0, patient_id="P1", thresholds=th, ref_new=[False, True, True]
    )
    b = scan_froc(np.zeros_like(prob), ref, voxel_volume_mm3=1.0, patient_id="P2", thresholds=th)
    curve = froc_curve([a, b])
    np.testing.assert_allclose(curve.sensitivity, [2 / 6, 1 / 6, 0, 0])
    np.testing.assert_allclose(curve.fp_per_scan, [0.5, 0.5, 0.5, 0.0])
    small = froc_curve([a, b], stratum_volume(0, 10))
    assert small.n_lesions == 4 and small.sensitivity[0] == pytest.approx(1 / 4)
    new = froc_curve([a], stratum_new)
    assert new.n_lesions == 2 and new.sensitivity[0] == pytest.approx(0.5)
    assert operating_threshold([a, b], 0.5) == 0.3
    assert operating_threshold([a, b], 0.2) == 0.99
    assert operating_threshold([a, b], -1.0) == 0.99  # unreachable: the highest threshold
    assert point_at([a, b], 0.5) == (pytest.approx(1 / 6), 0.5)
    with pytest.raises(ValueError, match="not on the grid"):
        point_at([a, b], 0.42)


def _cohort(p_detect: float, seed: int, n: int = 30) -> list[ScanFROC]:
    """n patients with 5 small lesions each, each detected with probability p_detect."""
    rng = np.random.default_rng(seed)
    return [
        ScanFROC(
            patient_id=f"P{i}",
            thresholds=np.array([0.5]),
            detected=(rng.random(5) < p_detect)[None],
            false_positives=np.array([0]),
            ref_volumes_mm3=np.full(5, 5.0),
            ref_new=np.zeros(5, bool),
        )
        for i in range(n)
    ]


def test_paired_bootstrap_separates_a_real_difference_and_not_noise() -> None:
    strong, weak, also_weak = _cohort(0.9, 1), _cohort(0.3, 2), _cohort(0.3, 3)
    d = paired_bootstrap_difference([(strong, 0.5)], [(weak, 0.5)], n_bootstrap=500, seed=0)
    assert d.difference == pytest.approx(
        froc_curve(strong).sensitivity[0] - froc_curve(weak).sensitivity[0]
    )
    assert 0 < d.ci_low < d.difference < d.ci_high
    same = paired_bootstrap_difference([(weak, 0.5)], [(also_weak, 0.5)], n_bootstrap=500, seed=0)
    assert same.ci_low < 0 < same.ci_high
    again = paired_bootstrap_difference([(strong, 0.5)], [(weak, 0.5)], n_bootstrap=500, seed=0)
    assert again == d  # the seed fixes the interval


def test_bad_inputs_are_refused() -> None:
    prob, ref = _scene()
    with pytest.raises(ValueError, match="differ in shape"):
        scan_froc(prob[:-1], ref, voxel_volume_mm3=1, patient_id="P")
    with pytest.raises(ValueError, match="increasing"):
        scan_froc(prob, ref, voxel_volume_mm3=1, patient_id="P", thresholds=(0.5, 0.3))
    with pytest.raises(ValueError, match="ref_new"):
        scan_froc(prob, ref, voxel_volume_mm3=1, patient_id="P", ref_new=[True])
    a = scan_froc(prob, ref, voxel_volume_mm3=1, patient_id="P1", thresholds=(0.5,))
    b = scan_froc(prob, ref, voxel_volume_mm3=1, patient_id="P2", thresholds=(0.5,))
    with pytest.raises(ValueError, match="same patients"):
        paired_bootstrap_difference([([a], 0.5)], [([b], 0.5)])


def test_runs_of_several_seeds_pool_lesion_by_lesion() -> None:
    s1, s2, other = _cohort(0.9, 1), _cohort(0.3, 2), _cohort(0.6, 3)
    sens, fp = at_operating_point([(s1, 0.5), (s2, 0.5)])
    pooled = (
        froc_curve(s1).sensitivity[0] + froc_curve(s2).sensitivity[0]
    ) / 2  # equal lesion counts
    assert sens == pytest.approx(pooled) and fp == 0.0
    d = paired_bootstrap_difference([(s1, 0.5), (s2, 0.5)], [(other, 0.5)], n_bootstrap=300)
    assert d.difference == pytest.approx(pooled - froc_curve(other).sensitivity[0])
    assert d.ci_low < d.difference < d.ci_high and d.n_patients == 30
