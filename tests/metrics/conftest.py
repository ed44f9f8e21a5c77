"""Phantom factories shared by the metric tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def ball(shape, center_mm, radius_mm, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxels whose centre (at index * spacing) lies within ``radius_mm`` of ``center_mm``."""
    g = np.indices(shape).astype(np.float64)
    d2 = sum(((g[a] * spacing[a]) - center_mm[a]) ** 2 for a in range(3))
    return d2 <= radius_mm**2


def blobs(rng: np.random.Generator, shape=(24, 24, 24), level=0.75, sigma=1.5) -> np.ndarray:
    """Random smooth blobs: thresholded Gaussian-filtered noise."""
    x = ndimage.gaussian_filter(rng.random(shape), sigma)
    return x > np.quantile(x, level)


@pytest.fixture
def make_ball():
    return ball


@pytest.fixture
def make_blobs():
    return blobs
