"""Rigid transforms and resampling conventions."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.core.spatial import (
    resample_array,
    rigid_transform,
    rotation_angle_deg,
    voxel_to_world,
    world_to_voxel,
)


def test_rigid_transform_rotates_about_centre():
    t = rigid_transform((0, 0, 90), (1, 2, 3), center_mm=(10, 0, 0))
    p = t @ np.array([11.0, 0, 0, 1])
    np.testing.assert_allclose(p[:3], [10 + 1, 1 + 2, 0 + 3], atol=1e-12)
    assert rotation_angle_deg(t) == pytest.approx(90)


def test_resample_with_translation_moves_content_by_whole_voxels():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    a = np.zeros((10, 10, 10), np.uint8)
    a[4, 4, 4] = 1
    # fixed point p maps to moving p + (4, 0, 0) mm = +2 voxels along X
    t = rigid_transform((0, 0, 0), (4.0, 0, 0))
    out = resample_array(a, aff, (10, 10, 10), aff, transform=t, order=0)
    assert out.dtype == np.uint8
    assert tuple(np.argwhere(out)[0]) == (2, 4, 4)


def test_world_voxel_roundtrip(rng):
    aff = np.array([[0.9, 0.1, 0, -5], [0, 1.1, 0.2, 3], [0.1, 0, 2.5, 1], [0, 0, 0, 1]])
    idx = rng.random((5, 3)) * 10
    np.testing.assert_allclose(world_to_voxel(voxel_to_world(idx, aff), aff), idx, atol=1e-9)
