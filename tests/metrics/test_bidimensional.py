"""Long and perpendicular short axis in the slice plane, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from metstrack.metrics.bidimensional import bidimensional_mm


def _plus(shape=(15, 15, 3), k=1, along_x=11, along_y=5):
    m = np.zeros(shape, bool)
    cx, cy = 7, 7
    m[cx - along_x // 2 : cx + along_x // 2 + 1, cy, k] = True
    m[cx, cy - along_y // 2 : cy + along_y // 2 + 1, k] = True
    return m


def test_empty_mask_is_none():
    assert bidimensional_mm(np.zeros((4, 4, 4), bool), np.eye(4)) is None


def test_one_voxel_is_zero():
    m = np.zeros((4, 4, 4), bool)
    m[1, 2, 3] = True
    r = bidimensional_mm(m, np.eye(4))
    assert (r.long_axis_mm, r.short_axis_mm, r.slice_index) == (0.0, 0.0, 3)


def test_plus_shape_gives_both_arms():
    r = bidimensional_mm(_plus(), np.eye(4))
    assert r.long_axis_mm == pytest.approx(10.0)
    assert r.short_axis_mm == pytest.approx(4.0)
    assert r.slice_index == 1


def test_anisotropic_spacing_swaps_the_axes():
    aff = np.diag([0.5, 2.0, 3.0, 1.0])
    r = bidimensional_mm(_plus(), aff)
    # x arm: 10 steps of 0.5 mm = 5 mm; y arm: 4 steps of 2 mm = 8 mm
    assert r.long_axis_mm == pytest.approx(8.0)
    assert r.short_axis_mm == pytest.approx(5.0)


def test_long_axis_is_the_largest_in_plane_distance_brute_force(rng):
    m = np.zeros((14, 12, 5), bool)
    m[3:11, 2:9, 1:4] = rng.random((8, 7, 3)) < 0.7
    aff = np.array([[0.9, 0.1, 0, -5], [-0.1, 0.9, 0, 3], [0, 0, 2.5, 1], [0, 0, 0, 1]])
    r = bidimensional_mm(m, aff)
    best = 0.0
    for k in range(m.shape[2]):
        ij = np.argwhere(m[:, :, k])
        if len(ij) > 1:
            pts = np.column_stack([ij, np.full(len(ij), k), np.ones(len(ij))]) @ aff.T
            best = max(best, float(pdist(pts[:, :3]).max()))
    assert r.long_axis_mm == pytest.approx(best)
    ends, short = r.long_axis_points_mm, r.short_axis_points_mm
    assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(r.long_axis_mm)
    assert np.linalg.norm(short[1] - short[0]) == pytest.approx(r.short_axis_mm)
    assert abs(np.dot(ends[1] - ends[0], short[1] - short[0])) < 1e-9
    assert 0 < r.short_axis_mm <= r.long_axis_mm


def test_disc_has_equal_axes():
    x, y = np.mgrid[:21, :21]
    m = np.zeros((21, 21, 1), bool)
    m[:, :, 0] = (x - 10) ** 2 + (y - 10) ** 2 <= 64
    r = bidimensional_mm(m, np.eye(4))
    assert r.long_axis_mm == pytest.approx(16.0)
    assert r.short_axis_mm == pytest.approx(16.0, abs=1.0)


def test_the_largest_slice_is_measured():
    m = np.zeros((12, 12, 3), bool)
    m[2:5, 2:5, 0] = True
    m[1:10, 4:6, 2] = True
    r = bidimensional_mm(m, np.eye(4))
    assert r.slice_index == 2
