"""Fixtures of the preprocessing tests: a smooth head phantom with skull and brain."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from metstrack.types import Volume


def make_head(n: int = 40, spacing_mm: float = 2.0, seed: int = 0, contrast: str = "t1c"):
    """A head phantom: scalp, dark skull, textured brain with a bright blob.

    Returns (Volume, brain mask) on a centred isotropic grid.
    """
    rng = np.random.default_rng(seed)
    c = np.arange(n) - (n - 1) / 2.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + y**2 + (z / 0.9) ** 2)
    brain = r < n * 0.34
    skull = (r >= n * 0.36) & (r < n * 0.40)
    scalp = (r >= n * 0.40) & (r < n * 0.45)
    texture = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 2.0)
    texture = texture / texture.std()
    blob = (np.abs(x - 3) < 3) & (np.abs(y + 4) < 5) & (np.abs(z) < 4)
    if contrast == "t1c":
        img = np.where(brain, 300 + 20 * texture + 150 * blob, 0.0)
        img = img + np.where(skull, 20.0, 0.0) + np.where(scalp, 600.0, 0.0)
    else:  # inverted, T2-like contrast for multimodal registration
        img = np.where(brain, 500 - 40 * texture - 200 * blob, 0.0)
        img = img + np.where(skull, 10.0, 0.0) + np.where(scalp, 200.0, 0.0)
    img = ndimage.gaussian_filter(img, 0.7).astype(np.float32)
    aff = np.diag([spacing_mm] * 3 + [1.0])
    aff[:3, 3] = -spacing_mm * (n - 1) / 2.0
    return Volume(array=img, affine=aff), brain


@pytest.fixture
def head():
    """Callable building the head phantom (see :func:`make_head`)."""
    return make_head
