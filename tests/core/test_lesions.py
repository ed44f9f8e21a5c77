"""Lesion tables on analytic phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from metstrack.core.lesions import label_components, lesion_table


def test_cube_and_single_voxel_anisotropic():
    m = np.zeros((20, 20, 20), np.uint8)
    m[2:5, 2:5, 2:5] = 1
    m[10, 10, 10] = 1
    aff = np.diag([1.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-10, 0, 5]
    cube, dot = lesion_table(m, aff)
    assert cube.voxel_count == 27 and cube.volume_mm3 == pytest.approx(162.0)
    assert cube.centroid_mm == pytest.approx((-7.0, 6.0, 14.0))
    assert cube.longest_diameter_mm == pytest.approx(np.sqrt(2**2 + 4**2 + 6**2))
    assert cube.bbox == (2, 2, 2, 5, 5, 5)
    assert dot.volume_mm3 == pytest.approx(6.0) and dot.longest_diameter_mm == 0.0


@pytest.mark.parametrize("connectivity,structure", [(6, 1), (18, 2), (26, 3)])
def test_component_count_agrees_with_scipy(connectivity, structure, rng):
    m = rng.random((30, 30, 30)) > 0.8
    _, n = label_components(m, connectivity=connectivity)
    _, n_ref = ndimage.label(m, structure=ndimage.generate_binary_structure(3, structure))
    assert n == n_ref


def test_empty_mask_has_no_lesions():
    assert lesion_table(np.zeros((5, 5, 5)), np.eye(4)) == []


def test_sphere_diameter_close_to_analytic():
    r = 8
    g = np.indices((25, 25, 25)) - 12
    m = (g**2).sum(0) <= r * r
    (les,) = lesion_table(m, np.eye(4))
    assert les.longest_diameter_mm == pytest.approx(2 * r, abs=0.01)
    assert les.volume_mm3 == pytest.approx(4 / 3 * np.pi * r**3, rel=0.03)


def test_label_map_agrees_with_lesion_table_and_scipy(rng):
    from metstrack.core.lesions import label_map

    m = rng.random((20, 18, 16)) > 0.85
    lm = label_map(m)
    table = lesion_table(m, np.eye(4))
    assert lm.n == len(table)
    for les in table:
        assert tuple(lm.bboxes[les.label]) == les.bbox
        assert lm.voxel_counts[les.label] == les.voxel_count
        assert tuple(lm.centroids_voxel[les.label]) == pytest.approx(les.centroid_voxel)
    sl, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    assert n == lm.n
    assert sorted(np.bincount(sl.ravel())[1:]) == sorted(lm.voxel_counts[1:])
