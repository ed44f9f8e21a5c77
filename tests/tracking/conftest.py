"""Hand-built lesion masks on small grids for the tracking tests (fixture ``tk``)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from metstrack.types import Volume

SHAPE = (32, 32, 32)


def affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def ball(centre, radius, shape=SHAPE) -> np.ndarray:
    """Boolean ball of ``radius`` voxels around ``centre`` (voxel indices)."""
    g = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(g - np.asarray(centre, dtype=float), axis=-1) <= radius


def mask(*parts, shape=SHAPE, aff=None) -> Volume:
    """A uint8 mask volume that is the union of boolean arrays or slice tuples."""
    m = np.zeros(shape, dtype=np.uint8)
    for p in parts:
        if isinstance(p, np.ndarray):
            m |= p.astype(np.uint8)
        else:
            m[p] = 1
    return Volume(m, affine() if aff is None else aff)


def rows(result, lesion_id):
    """Trajectory rows of one lesion, in study order."""
    t = result.trajectories
    return t[t["lesion_id"] == lesion_id].sort_values("study_index")


def id_at(result, study, voxel) -> int:
    """Tracked ID at a voxel of a study."""
    return int(result.tracked_maps[study].array[tuple(voxel)])


@pytest.fixture
def tk():
    """These helpers (ball, mask, affine, rows, id_at, SHAPE) as a namespace."""
    return sys.modules[__name__]
