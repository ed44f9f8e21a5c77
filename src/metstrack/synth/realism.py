"""Statistics that say how close a (synthetic or real) scan is to clinical MRI.

The same estimators run on a synthetic study and on a real case, without using
the synthetic ground truth, so the figures compare like with like
(``benchmarks/realism.py`` prints them side by side):

- :func:`zscore_stats`: skew of the z-scored intensities inside the brain and the
  fraction of brain voxels more than 3 SD above the mean (post-contrast T1: the
  bright tail of vessels and enhancement);
- :func:`tissue_classes`: a 3-class Gaussian mixture of T1 intensities in the
  brain (CSF, grey, white matter) giving the white/grey ratio and the grey-matter
  fraction of the intracranial volume;
- :func:`tubular_bright_fraction`: the share of bright post-contrast voxels that
  lie in elongated (tube-like) connected structures;
- :func:`sphericity`: 1 for a sphere, lower for lobulated or irregular shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes, mesh_surface_area
from sklearn.mixture import GaussianMixture

#: A bright voxel is at least this many SD above the brain mean (z-scored).
BRIGHT_Z = 3.0
#: A component is tubular when its longest principal axis is this many times its second.
TUBE_ELONGATION = 3.0


@dataclass(frozen=True)
class IntensityStats:
    """Shape of a z-scored intensity distribution inside the brain.

    Attributes:
        skew: Sample skewness (third standardised moment).
        bright_fraction: Fraction of brain voxels with z > 3.
        n_voxels: Brain voxels used.
    """

    skew: float
    bright_fraction: float
    n_voxels: int


def zscore_stats(image: np.ndarray, brain: np.ndarray) -> IntensityStats:
    """Skew and bright fraction of ``image`` z-scored inside ``brain``.

    Args:
        image: float (X, Y, Z) intensities.
        brain: bool (X, Y, Z) brain mask (same grid).
    """
    v = np.asarray(image, dtype=np.float64)[brain]
    if v.size < 10:
        return IntensityStats(float("nan"), float("nan"), int(v.size))
    z = (v - v.mean()) / (v.std() + 1e-12)
    return IntensityStats(float(np.mean(z**3)), float(np.mean(z > BRIGHT_Z)), int(v.size))


@dataclass(frozen=True)
class TissueClasses:
    """Three-class mixture of T1 intensities in the brain.

    Attributes:
        white_grey_ratio: Mean white-matter over mean grey-matter intensity.
        grey_fraction: Share of brain voxels assigned to grey matter.
        means: (csf, grey, white) class means.
    """

    white_grey_ratio: float
    grey_fraction: float
    means: tuple[float, float, float]


def tissue_classes(t1: np.ndarray, brain: np.ndarray, *, seed: int = 0) -> TissueClasses:
    """Fit a 3-component Gaussian mixture to T1 brain intensities (sorted: CSF, GM, WM).

    Args:
        t1: float (X, Y, Z) T1 (pre-contrast) image.
        brain: bool (X, Y, Z) brain mask.
        seed: Subsampling and initialisation seed.
    """
    v = np.asarray(t1, dtype=np.float64)[brain]
    rng = np.random.default_rng(seed)
    if v.size > 200_000:
        v = rng.choice(v, 200_000, replace=False)
    gm = GaussianMixture(3, random_state=seed, n_init=2).fit(v[:, None])
    order = np.argsort(gm.means_.ravel())
    means = gm.means_.ravel()[order]
    lab = np.argsort(order)[gm.predict(v[:, None])]
    return TissueClasses(
        white_grey_ratio=float(means[2] / means[1]),
        grey_fraction=float(np.mean(lab == 1)),
        means=(float(means[0]), float(means[1]), float(means[2])),
    )


def elongation(coords: np.ndarray) -> float:
    """Ratio of the largest to the second principal standard deviation of points (n, 3)."""
    if len(coords) < 3:
        return 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(coords.T)))[::-1]
    return float(np.sqrt(max(ev[0], 1e-12) / max(ev[1], 1e-12)))


def tubular_bright_fraction(
    image: np.ndarray, brain: np.ndarray, spacing_mm: tuple[float, float, float]
) -> float:
    """Share of bright voxels (z > 3 in the brain) in elongated connected structures.

    Components of at least 5 voxels (26-connected) whose principal-axis ratio is
    at least :data:`TUBE_ELONGATION` count as tubular.

    Args:
        image: float (X, Y, Z) post-contrast T1.
        brain: bool (X, Y, Z) brain mask.
        spacing_mm: Voxel size (mm) along each axis.
    """
    v = np.asarray(image, dtype=np.float64)
    vals = v[brain]
    bright = brain & (v > vals.mean() + BRIGHT_Z * vals.std())
    total = int(bright.sum())
    if total == 0:
        return float("nan")
    lab = cc3d.connected_components(bright.astype(np.uint8), connectivity=26)
    tube = 0
    sp = np.asarray(spacing_mm, dtype=np.float64)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        pts = np.argwhere(lab[sl] == k)
        if len(pts) >= 5 and elongation(pts * sp) >= TUBE_ELONGATION:
            tube += len(pts)
    return tube / total


def sphericity(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Sphericity ``pi^(1/3) (6 V)^(2/3) / A`` of a binary shape (marching-cubes surface).

    Args:
        mask: bool (X, Y, Z) one object.
        spacing_mm: Voxel size (mm).

    Returns:
        About 0.8-0.9 for a voxelised sphere (marching cubes on the voxels), lower for irregular shapes; NaN when empty.
    """
    if not mask.any():
        return float("nan")
    padded = np.pad(mask.astype(np.float32), 2)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=tuple(spacing_mm))
    area = float(mesh_surface_area(verts, faces))
    vol = float(mask.sum() * np.prod(spacing_mm))
    return float(np.pi ** (1 / 3) * (6 * vol) ** (2 / 3) / area)
