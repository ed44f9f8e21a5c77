"""Brain masks: a registration-free heuristic for skull-on T1 post scans.

The heuristic (:func:`brain_mask`) works on an isotropic working grid:

1. median-filter the image; Otsu's threshold separates head from air, and the
   filled head gives every voxel a depth (mm from the head surface);
2. the brain's intensity band is the median +- ``band_mads`` robust standard
   deviations (MAD) of the bright voxels deep inside the head; scalp fat is
   brighter and skull and air darker than the band;
3. voxels inside the band and deeper than ``min_depth_mm`` are eroded by
   ``erode_mm`` (cutting thin bridges to the scalp and the orbits), the largest
   6-connected component is kept and dilated back within the band;
4. the mask grows by up to ``grow_mm`` into tissue brighter than Otsu's threshold
   (cortical grey matter darker than the band), never across the dark skull;
5. a closing of ``closing_mm`` and 3D hole filling restore sulci, ventricles and
   dark lesion cores.

On the real skull-on TCGA-FG-6692 T1 post it reaches Dice 0.94 against an
HD-BET mask, and 0.92-0.96 against the tissue truth of synthetic heads. Skull-stripped data should use :func:`nonzero_mask` instead
(``metstrack preprocess --no-brain-mask``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from metstrack.errors import InvalidImageError
from metstrack.preprocess.grid import Grid, isotropic_grid
from metstrack.preprocess.spatial import resample_array
from metstrack.types import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrainMaskConfig:
    """Parameters of the skull-on brain-mask heuristic (all lengths in mm).

    Attributes:
        working_spacing_mm: Isotropic spacing the heuristic runs at.
        band_mads: Half-width of the brain intensity band in robust SDs.
        min_depth_mm: Minimum depth below the head surface of brain voxels.
        erode_mm: Erosion radius that cuts bridges to non-brain tissue.
        closing_mm: Closing radius that restores the brain outline.
        min_relative_spread: Floor of the robust SD as a fraction of the median
            (a very homogeneous white matter must not make the band too narrow).
        grow_mm: Final growth into tissue brighter than ``grow_threshold`` times
            Otsu's threshold (grey matter darker than the band), in mm.
        grow_threshold: Lower intensity bound of that growth, relative to Otsu's threshold.
    """

    working_spacing_mm: float = 1.5
    band_mads: float = 4.0
    min_depth_mm: float = 5.0
    erode_mm: float = 3.0
    closing_mm: float = 5.0
    min_relative_spread: float = 0.06
    grow_mm: float = 3.0
    grow_threshold: float = 1.0


def _ball(radius_vox: float) -> np.ndarray:
    r = max(1, int(np.ceil(radius_vox)))
    x, y, z = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return x * x + y * y + z * z <= radius_vox * radius_vox + 1e-9


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
    if lab.max() == 0:
        return np.zeros(mask.shape, dtype=bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == counts.argmax()


def _pad_op(op, mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    # Pad so closings and distance transforms do not stick to the array border.
    p = structure.shape[0] // 2 + 1
    out = op(np.pad(mask, p), structure)
    return out[p:-p, p:-p, p:-p]


def brain_mask(vol: Volume, cfg: BrainMaskConfig | None = None) -> np.ndarray:
    """Brain mask of a skull-on T1 (post) image by an intensity-band heuristic.

    Args:
        vol: The image (any grid, any orientation; float-castable).
        cfg: Heuristic parameters (defaults when ``None``).

    Returns:
        bool array on ``vol``'s grid, shape (X, Y, Z).

    Raises:
        InvalidImageError: The image is constant or no brain-like region is found.
    """
    cfg = cfg or BrainMaskConfig()
    s = float(cfg.working_spacing_mm)
    work = isotropic_grid(vol, s)
    img = resample_array(vol.array, vol.affine, work.shape, work.affine, order=1)
    sm = ndimage.median_filter(img, 3)
    positive = sm[sm > 0]
    if positive.size < 27 or float(np.ptp(positive)) == 0:
        raise InvalidImageError(f"{vol.path or 'image'}: constant image; no brain to mask")
    t_head = float(threshold_otsu(positive))
    head = _pad_op(ndimage.binary_closing, sm > 0.5 * t_head, _ball(2.0))
    head = ndimage.binary_fill_holes(head)
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=s)[1:-1, 1:-1, 1:-1]
    deep = (depth > 0.5 * depth.max()) & (sm > t_head)
    if not deep.any():
        raise InvalidImageError(f"{vol.path or 'image'}: no head region found for the brain mask")
    vals = sm[deep]
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * 1.4826
    mad = max(mad, cfg.min_relative_spread * med)
    lo = max(0.8 * t_head, med - cfg.band_mads * mad)
    hi = med + cfg.band_mads * mad
    fg = (sm > lo) & (sm < hi) & (depth > cfg.min_depth_mm)
    core = _largest_component(ndimage.binary_erosion(fg, _ball(cfg.erode_mm / s)))
    if not core.any():
        raise InvalidImageError(
            f"{vol.path or 'image'}: the brain-mask heuristic found no brain; "
            "is this a T1 post image? use --no-brain-mask for skull-stripped data"
        )
    m = ndimage.binary_dilation(core, _ball(cfg.erode_mm / s)) & fg
    if cfg.grow_mm > 0:
        # Grey matter darker than the band: grow into tissue brighter than Otsu's
        # threshold (never across the dark skull and CSF), a few mm at most.
        tissue = (sm > cfg.grow_threshold * t_head) & (sm < hi) & (depth > cfg.min_depth_mm)
        m = m | (ndimage.binary_dilation(m, _ball(cfg.grow_mm / s)) & tissue)
    m = _pad_op(ndimage.binary_closing, m, _ball(cfg.closing_mm / s))
    m = ndimage.binary_fill_holes(m)
    log.debug(
        "brain mask of %s: band %.4g..%.4g, %d voxels at %.2g mm",
        vol.path,
        lo,
        hi,
        int(m.sum()),
        s,
    )
    out = resample_array(m.astype(np.uint8), work.affine, vol.shape, vol.affine, order=0)
    return out.astype(bool)


def nonzero_mask(vol: Volume) -> np.ndarray:
    """Brain mask of a skull-stripped image: its non-zero voxels with holes filled.

    Args:
        vol: Skull-stripped image (background exactly 0).

    Returns:
        bool (X, Y, Z) array.
    """
    return ndimage.binary_fill_holes(np.asarray(vol.array) != 0)


def mask_on_grid(mask: np.ndarray, source: Volume | Grid, target: Grid) -> np.ndarray:
    """Nearest-neighbour copy of a boolean mask from one grid onto another."""
    src = Grid.of(source)
    out = resample_array(mask.astype(np.uint8), src.affine, target.shape, target.affine, order=0)
    return out.astype(bool)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap of two boolean masks (NaN when both are empty)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    denom = int(p.sum()) + int(r.sum())
    return float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom
