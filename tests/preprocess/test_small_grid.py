"""Registration of grids smaller than the pyramid: capped levels, never an ITK traceback."""

from __future__ import annotations

import numpy as np

from metstrack.preprocess.config import PreprocessConfig
from metstrack.preprocess.register import pyramid_shrink_factors, register
from metstrack.types import Volume


def test_pyramid_is_capped_by_the_grid():
    assert pyramid_shrink_factors((4, 2, 1), (64, 64, 64)) == [4, 2, 1]
    assert pyramid_shrink_factors((4, 2), (8, 40, 40)) == [1, 1]
    assert pyramid_shrink_factors((4, 2), (16, 16, 16)) == [2, 2]


def test_an_8_voxel_grid_registers(rng):
    a = Volume(rng.normal(100, 10, (8, 8, 8)).astype(np.float32), np.eye(4))
    b = Volume(rng.normal(100, 10, (8, 8, 8)).astype(np.float32), np.eye(4))
    res = register(a, b, PreprocessConfig().within_study, initial=np.eye(4))
    assert res.transform.shape == (4, 4) and np.all(np.isfinite(res.transform))
