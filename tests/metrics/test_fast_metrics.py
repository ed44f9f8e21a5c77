"""The one-pass study metrics equal slow, straightforward references on random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from metstrack.core.lesions import label_map
from metstrack.metrics.detection import component_surfaces
from metstrack.metrics.foreground import foreground_overlaps, label_foreground
from metstrack.metrics.matching import pair_overlaps
from metstrack.metrics.study import StudyOptions, evaluate_study
from metstrack.metrics.voxel import (
    _grouped_percentile,
    compute_dice,
    compute_hd95,
    grouped_hd95,
    hd95_from_distances,
    surface_distances_from_points,
)


def random_mask(seed: int, shape=(28, 24, 20), level=0.8, sigma=1.2) -> np.ndarray:
    """Smooth random blobs, many touching the array border, some single voxels."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape), sigma)
    m = x > np.quantile(x, level)
    singles = rng.integers(0, np.array(shape), size=(4, 3))
    m[tuple(singles.T)] = True
    return m


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_foreground_equals_label_map_and_per_lesion_erosion(seed, connectivity) -> None:
    mask = random_mask(seed)
    fast = label_foreground(mask, connectivity=connectivity)
    slow = label_map(mask, connectivity=connectivity)
    assert fast.map.n == slow.n > 3
    np.testing.assert_array_equal(fast.map.labels, slow.labels)
    np.testing.assert_array_equal(fast.map.voxel_counts, slow.voxel_counts)
    np.testing.assert_array_equal(fast.map.bboxes[1:], slow.bboxes[1:])
    np.testing.assert_allclose(fast.map.centroids_voxel, slow.centroids_voxel, rtol=0, atol=1e-12)
    surfaces = component_surfaces(slow)
    assert len(fast.surfaces) == len(surfaces)
    for a, b in zip(fast.surfaces, surfaces, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.foreground, np.flatnonzero(mask))


def test_label_foreground_of_an_empty_and_a_full_mask() -> None:
    empty = label_foreground(np.zeros((5, 6, 7), bool))
    assert empty.map.n == 0 and len(empty.surfaces) == 1 and empty.foreground.size == 0
    full = label_foreground(np.ones((5, 6, 7), np.uint8))
    interior = 3 * 4 * 5
    assert full.map.n == 1 and len(full.surfaces[1]) == 5 * 6 * 7 - interior


@pytest.mark.parametrize("seed", [3, 4])
def test_foreground_overlaps_equal_the_joint_histogram(seed) -> None:
    p, r = random_mask(seed), random_mask(seed + 100)
    fast = foreground_overlaps(label_foreground(p), label_foreground(r))
    assert fast == pair_overlaps(label_map(p), label_map(r)) and fast


def test_grouped_percentile_is_numpy_percentile_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 40, 2000)
    values = rng.random(2000) * 50
    got = _grouped_percentile(values, groups, 42, 95.0)
    for g in range(42):
        v = values[groups == g]
        if v.size:
            assert got[g] == np.percentile(v, 95.0)
        else:
            assert math.isnan(got[g])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.3, 2.5)])
def test_grouped_hd95_equals_each_pair_alone(spacing) -> None:
    rng = np.random.default_rng(6)
    n_groups = 12
    pp = rng.integers(0, 60, (900, 3))
    rp = rng.integers(0, 60, (700, 3))
    pg, rg = rng.integers(0, n_groups - 2, 900), rng.integers(1, n_groups - 1, 700)
    got = grouped_hd95(pp, pg, rp, rg, n_groups, spacing_mm=spacing)
    for g in range(n_groups):
        want = hd95_from_distances(
            surface_distances_from_points(pp[pg == g], rp[rg == g], spacing_mm=spacing)
        )
        if math.isnan(want):
            assert math.isnan(got[g])
        else:
            assert got[g] == pytest.approx(want, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("mode", ["overlap", "brats"])
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_lesion_dice_and_hd95_equal_full_mask_metrics_per_pair(seed, mode) -> None:
    """Reference: build each pair's masks on the whole grid and run the plain metrics."""
    rng = np.random.default_rng(seed)
    shape = (44, 40, 36)
    ref = random_mask(seed, shape=shape, level=0.93)
    pred = ndimage.shift(ref.astype(float), rng.integers(-1, 2, 3), order=0) > 0.5
    pred ^= random_mask(seed + 50, shape=shape, level=0.97)
    spacing = (1.0, 1.2, 1.7)
    ev = evaluate_study(pred, ref, spacing_mm=spacing, options=StudyOptions(mode=mode))
    pl, rl = label_map(pred).labels, label_map(ref).labels
    tps = [r for r in ev.lesions if r.kind == "tp"]
    assert len(tps) >= 3
    for rec in tps:
        pm = np.isin(pl, rec.pred_labels)
        rm = np.isin(rl, rec.ref_labels)
        assert rec.hd95_mm == pytest.approx(compute_hd95(pm, rm, spacing_mm=spacing), abs=1e-9)
        assert rec.dice == pytest.approx(compute_dice(pm, rm), abs=1e-12)
    assert ev.voxel.hd95_mm == pytest.approx(compute_hd95(pred, ref, spacing_mm=spacing), abs=1e-9)
    assert ev.voxel.dice == pytest.approx(compute_dice(pred, ref), abs=1e-12)
