"""map_to_native / map_to_baseline and the per-study transform file."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.core.grid import Grid
from metstrack.core.mapping import (
    StudyTransform,
    load_transform,
    map_to_baseline,
    map_to_native,
    save_transform,
)
from metstrack.core.spatial import rigid_transform
from metstrack.errors import DatasetError, GeometryMismatchError
from metstrack.types import Volume


def _sphere(shape, affine, centre_mm, radius_mm):
    idx = np.indices(shape).reshape(3, -1).T
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(mm - centre_mm, axis=1) < radius_mm).reshape(shape).astype(np.uint8)


def test_native_baseline_round_trip_moves_lesion_where_the_transform_says(tmp_path):
    base = Grid((48, 48, 48), np.diag([1.0, 1.0, 1.0, 1.0]))
    native_aff = np.diag([0.9, 0.9, 3.0, 1.0])
    native_aff[:3, 3] = [-2.0, 1.0, -4.0]
    native = Grid((56, 56, 18), native_aff)
    b2s = rigid_transform((5.0, -3.0, 6.0), (3.0, -2.0, 1.0), center_mm=(24, 24, 24))
    lesion_base = _sphere(base.shape, base.affine, np.array([24.0, 22.0, 25.0]), 6.0)
    st = StudyTransform("P1", "S2", "S1", b2s, native, base)
    path = save_transform(tmp_path, st)
    st2 = load_transform(tmp_path, "P1", "S2")
    assert path.name == "S2.json" and np.allclose(st2.baseline_to_study, b2s)
    on_native = map_to_native(Volume(lesion_base, base.affine), native, st2, order=0)
    assert on_native.array.dtype == np.uint8
    assert np.allclose(on_native.affine, native_aff)
    # the lesion centroid lands where baseline_to_study sends it
    idx = np.argwhere(on_native.array > 0).mean(axis=0)
    centroid_native = native_aff[:3, :3] @ idx + native_aff[:3, 3]
    expected = b2s[:3, :3] @ np.array([24.0, 22.0, 25.0]) + b2s[:3, 3]
    assert np.linalg.norm(centroid_native - expected) < 1.0
    vol_mm3 = on_native.array.sum() * 0.9 * 0.9 * 3.0
    assert abs(vol_mm3 - lesion_base.sum()) / lesion_base.sum() < 0.1
    back = map_to_baseline(on_native, base, b2s, order=0)
    d = 2 * (back.array & lesion_base).sum() / (back.array.sum() + lesion_base.sum())
    assert d > 0.85


def test_bare_arrays_need_matching_grids(tmp_path):
    base = Grid((8, 8, 8), np.eye(4))
    with pytest.raises(GeometryMismatchError, match="shape"):
        map_to_native(np.zeros((7, 8, 8), np.uint8), base, np.eye(4), baseline_grid=base)
    with pytest.raises(ValueError, match="grid"):
        map_to_native(np.zeros((8, 8, 8), np.uint8), base, np.eye(4))
    with pytest.raises(DatasetError, match="run `metstrack preprocess`"):
        load_transform(tmp_path, "P", "S")
    bad = tmp_path / "bad.json"
    bad.write_text('{"PatientID": "P"}')
    with pytest.raises(DatasetError, match="malformed"):
        load_transform(bad)
