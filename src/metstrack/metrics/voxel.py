"""Voxel-level metrics: Dice, HD95, average surface distance and surface Dice, in mm.

Definitions follow MONAI (``monai.metrics``) so numbers agree with it:

- The *surface* of a mask is the set of its voxels with at least one
  face-neighbour (6-connectivity) outside the mask; voxels on the array border
  count as surface (the outside of the array is background).
- The directed distance from a surface voxel of A to B is the Euclidean
  distance in mm (anisotropic spacing respected) between voxel centres to the
  nearest surface voxel of B. It is computed exactly with a KD-tree over the
  surface voxels, so the cost grows with the surface size, not the volume.
- HD95 is ``max(P95(d(pred -> ref)), P95(d(ref -> pred)))`` with NumPy's linear
  percentile; the average surface distance (ASD) is the mean of both directed
  distance sets pooled; the surface Dice at tolerance ``tau`` mm is the share of
  both surfaces lying within ``tau`` of the other surface.

Empty-mask policy (one rule for every function here):

===================  ==========  ==========  ===========  ============
case                 Dice        HD95 / ASD  surface Dice  volumes
===================  ==========  ==========  ===========  ============
both empty           NaN         NaN         NaN           0
prediction empty     0.0         NaN         0.0           defined
reference empty      0.0         NaN         0.0           defined
===================  ==========  ==========  ===========  ============

NaN means *undefined*; cohort reductions skip NaN and report how many values
were defined. (Penalised lesion-wise scores such as BraTS's 374 mm are applied
in :mod:`metstrack.metrics.detection`, never here.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from metstrack.core.affine import spacing_from_affine

__all__ = [
    "SurfaceDistances",
    "VoxelMetrics",
    "compute_average_surface_distance",
    "compute_dice",
    "compute_hd95",
    "compute_surface_dice",
    "compute_surface_distances",
    "compute_voxel_metrics",
    "grouped_hd95",
    "spacing_from_affine",
    "surface_voxels",
]


def _check_spacing(spacing_mm: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be three positive numbers (mm), got {spacing_mm!r}")
    return sp


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if pred.ndim != 3:
        raise ValueError(f"expected 3D (X, Y, Z) masks, got shape {pred.shape}")
    return pred != 0, ref != 0


def compute_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P & R| / (|P| + |R|)`` of two binary masks.

    Args:
        pred: (X, Y, Z) predicted mask; non-zero is foreground.
        ref: (X, Y, Z) reference mask, same shape.

    Returns:
        Dice in [0, 1]; NaN when both masks are empty, 0 when exactly one is.
    """
    p, r = _check_pair(pred, ref)
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    if n_p + n_r == 0:
        return math.nan
    inter = int(np.count_nonzero(p & r)) if n_p and n_r else 0
    return 2.0 * inter / (n_p + n_r)


def surface_voxels(mask: np.ndarray, *, offset: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Indices of the surface voxels of a binary mask.

    Args:
        mask: (X, Y, Z) bool array; the outside of the array counts as background.
        offset: Added to the returned indices (the corner of a crop in the full array).

    Returns:
        int64 (N, 3) voxel indices (X, Y, Z) of the voxels with a face-neighbour
        outside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros((0, 3), dtype=np.int64)
    edges = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(edges).astype(np.int64) + np.asarray(offset, dtype=np.int64)


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the foreground, grown by one voxel (clipped to the array)."""
    if not mask.any():
        return None
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(int(nz[0]) - 1, 0), min(int(nz[-1]) + 2, mask.shape[ax])))
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances between two masks (mm).

    Attributes:
        pred_to_ref_mm: float64 (N_pred_surface,) distance from each predicted
            surface voxel to the nearest reference surface voxel.
        ref_to_pred_mm: float64 (N_ref_surface,) the other direction.
    """

    pred_to_ref_mm: np.ndarray
    ref_to_pred_mm: np.ndarray

    @property
    def defined(self) -> bool:
        """Both surfaces are non-empty, so distances exist."""
        return self.pred_to_ref_mm.size > 0 and self.ref_to_pred_mm.size > 0


def surface_distances_from_points(
    pred_surface: np.ndarray, ref_surface: np.ndarray, *, spacing_mm: Sequence[float]
) -> SurfaceDistances:
    """Exact directed distances between two sets of surface voxel indices.

    Args:
        pred_surface: int (N, 3) voxel indices (X, Y, Z) of the predicted surface.
        ref_surface: int (M, 3) voxel indices of the reference surface.
        spacing_mm: Voxel spacing along X, Y, Z in mm.

    Returns:
        :class:`SurfaceDistances`; both arrays are empty unless both sets are non-empty.
    """
    sp = _check_spacing(spacing_mm)
    if len(pred_surface) == 0 or len(ref_surface) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return SurfaceDistances(empty, empty.copy())
    a = np.asarray(pred_surface, dtype=np.float64) * sp
    b = np.asarray(ref_surface, dtype=np.float64) * sp
    d_ab, _ = cKDTree(b, leafsize=32, balanced_tree=False).query(a, k=1)
    d_ba, _ = cKDTree(a, leafsize=32, balanced_tree=False).query(b, k=1)
    return SurfaceDistances(np.asarray(d_ab, np.float64), np.asarray(d_ba, np.float64))


def compute_surface_distances(
    pred: np.ndarray, ref: np.ndarray, *, spacing_mm: Sequence[float]
) -> SurfaceDistances:
    """Directed surface distances (mm) between two binary masks.

    Surfaces are extracted on the bounding box of ``pred | ref`` grown by one voxel.

    Args:
        pred: (X, Y, Z) predicted mask; non-zero is foreground.
        ref: (X, Y, Z) reference mask, same shape.
        spacing_mm: Voxel spacing along X, Y, Z in mm (required: distances are in mm).

    Returns:
        :class:`SurfaceDistances` (empty arrays when either mask is empty).
    """
    p, r = _check_pair(pred, ref)
    box = _bbox(p | r)
    if box is None:
        return surface_distances_from_points(
            np.zeros((0, 3)), np.zeros((0, 3)), spacing_mm=spacing_mm
        )
    off = [s.start for s in box]
    return surface_distances_from_points(
        surface_voxels(p[box], offset=off),
        surface_voxels(r[box], offset=off),
        spacing_mm=spacing_mm,
    )


def hd95_from_distances(dist: SurfaceDistances, *, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance (mm); NaN when undefined."""
    if not dist.defined:
        return math.nan
    return float(
        max(
            np.percentile(dist.pred_to_ref_mm, percentile),
            np.percentile(dist.ref_to_pred_mm, percentile),
        )
    )


def _grouped_percentile(
    values: np.ndarray, groups: np.ndarray, n_groups: int, percentile: float
) -> np.ndarray:
    """Per-group percentile with NumPy's default (linear) method, bit for bit; NaN if empty."""
    out = np.full(n_groups, np.nan)
    if values.size == 0:
        return out
    order = np.lexsort((values, groups))
    v = values[order]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ok = counts > 0
    n = counts[ok]
    q = np.true_divide(percentile, 100)
    virtual = (n - 1) * q  # numpy.percentile's "linear" method, _lerp included
    lo = np.floor(virtual).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    t = virtual - lo
    a, b = v[starts[ok] + lo], v[starts[ok] + hi]
    diff = b - a
    res = a + diff * t
    res = np.where(t >= 0.5, b - diff * (1 - t), res)
    out[ok] = res
    return out


def grouped_hd95(
    pred_points: np.ndarray,
    pred_groups: np.ndarray,
    ref_points: np.ndarray,
    ref_groups: np.ndarray,
    n_groups: int,
    *,
    spacing_mm: Sequence[float],
    percentile: float = 95.0,
) -> np.ndarray:
    """HD95 (mm) of many (prediction, reference) surface pairs at once, each exact.

    Every pair ``g`` compares the predicted surface points whose group is ``g``
    with the reference points of group ``g``, as :func:`hd95_from_distances` of
    :func:`surface_distances_from_points` would. All pairs share one KD-tree per
    direction: each group is moved along X by ``g * shift`` with ``shift``
    larger than twice the points' extent, so a point's nearest neighbour is
    always in its own group, and the cost does not grow with the number of
    pairs (the offsets cost ~1e-10 mm of rounding).

    Args:
        pred_points: int (N, 3) voxel indices of predicted surfaces.
        pred_groups: int (N,) pair of each predicted point, in [0, n_groups).
        ref_points: int (M, 3) voxel indices of reference surfaces.
        ref_groups: int (M,) pair of each reference point.
        n_groups: Number of pairs.
        spacing_mm: Voxel spacing along X, Y, Z in mm.
        percentile: Percentile of the directed distances (100: Hausdorff).

    Returns:
        float64 (n_groups,) distances; NaN for a pair with an empty side.
    """
    sp = _check_spacing(spacing_mm)
    out = np.full(n_groups, np.nan)
    pg = np.asarray(pred_groups, dtype=np.int64)
    rg = np.asarray(ref_groups, dtype=np.int64)
    both = (np.bincount(pg, minlength=n_groups) > 0) & (np.bincount(rg, minlength=n_groups) > 0)
    if not both.any():
        return out
    pk, rk = both[pg], both[rg]
    a = np.asarray(pred_points, dtype=np.float64)[pk] * sp
    b = np.asarray(ref_points, dtype=np.float64)[rk] * sp
    pg, rg = pg[pk], rg[rk]
    lo = np.minimum(a.min(axis=0), b.min(axis=0))
    a -= lo
    b -= lo
    extent = float(np.linalg.norm(np.maximum(a.max(axis=0), b.max(axis=0))))
    shift = 2.0 * extent + 16.0
    a[:, 0] += pg * shift
    b[:, 0] += rg * shift
    d_ab, _ = cKDTree(b, leafsize=32, balanced_tree=False).query(a, k=1)
    d_ba, _ = cKDTree(a, leafsize=32, balanced_tree=False).query(b, k=1)
    h_ab = _grouped_percentile(np.asarray(d_ab, np.float64), pg, n_groups, percentile)
    h_ba = _grouped_percentile(np.asarray(d_ba, np.float64), rg, n_groups, percentile)
    out[both] = np.maximum(h_ab, h_ba)[both]
    return out


def asd_from_distances(dist: SurfaceDistances) -> float:
    """Symmetric average surface distance (mm), both directions pooled; NaN when undefined."""
    if not dist.defined:
        return math.nan
    return float(np.concatenate([dist.pred_to_ref_mm, dist.ref_to_pred_mm]).mean())


def surface_dice_from_distances(
    dist: SurfaceDistances, *, n_pred_surface: int, n_ref_surface: int, tolerance_mm: float
) -> float:
    """Surface Dice at ``tolerance_mm``: share of both surfaces within tolerance of the other."""
    total = n_pred_surface + n_ref_surface
    if total == 0:
        return math.nan
    if not dist.defined:
        return 0.0
    ok = np.count_nonzero(dist.pred_to_ref_mm <= tolerance_mm) + np.count_nonzero(
        dist.ref_to_pred_mm <= tolerance_mm
    )
    return float(ok) / total


def compute_hd95(
    pred: np.ndarray, ref: np.ndarray, *, spacing_mm: Sequence[float], percentile: float = 95.0
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    Args:
        pred: (X, Y, Z) predicted mask; non-zero is foreground.
        ref: (X, Y, Z) reference mask, same shape.
        spacing_mm: Voxel spacing along X, Y, Z in mm.
        percentile: Percentile of the directed distances (100 gives the Hausdorff distance).

    Returns:
        Distance in mm; NaN when either mask is empty.
    """
    return hd95_from_distances(
        compute_surface_distances(pred, ref, spacing_mm=spacing_mm), percentile=percentile
    )


def compute_average_surface_distance(
    pred: np.ndarray, ref: np.ndarray, *, spacing_mm: Sequence[float]
) -> float:
    """Symmetric average surface distance in mm (MONAI's ``symmetric=True``).

    Args:
        pred: (X, Y, Z) predicted mask; non-zero is foreground.
        ref: (X, Y, Z) reference mask, same shape.
        spacing_mm: Voxel spacing along X, Y, Z in mm.

    Returns:
        Distance in mm; NaN when either mask is empty.
    """
    return asd_from_distances(compute_surface_distances(pred, ref, spacing_mm=spacing_mm))


def compute_surface_dice(
    pred: np.ndarray, ref: np.ndarray, *, spacing_mm: Sequence[float], tolerance_mm: float = 1.0
) -> float:
    """Surface Dice (normalised surface distance) at a tolerance in mm.

    Args:
        pred: (X, Y, Z) predicted mask; non-zero is foreground.
        ref: (X, Y, Z) reference mask, same shape.
        spacing_mm: Voxel spacing along X, Y, Z in mm.
        tolerance_mm: A surface voxel counts as correct within this distance (inclusive).

    Returns:
        Value in [0, 1]; NaN when both masks are empty, 0 when exactly one is.
    """
    p, r = _check_pair(pred, ref)
    box = _bbox(p | r)
    if box is None:
        return math.nan
    off = [s.start for s in box]
    sp_, sr_ = surface_voxels(p[box], offset=off), surface_voxels(r[box], offset=off)
    dist = surface_distances_from_points(sp_, sr_, spacing_mm=spacing_mm)
    return surface_dice_from_distances(
        dist, n_pred_surface=len(sp_), n_ref_surface=len(sr_), tolerance_mm=tolerance_mm
    )


@dataclass(frozen=True)
class VoxelMetrics:
    """Whole-mask (voxel-level) agreement of a prediction with a reference.

    Attributes:
        dice: Dice coefficient (NaN when both masks are empty).
        hd95_mm: Symmetric 95th-percentile Hausdorff distance (NaN if either is empty).
        asd_mm: Symmetric average surface distance (NaN if either is empty).
        surface_dice: Surface Dice at ``tolerance_mm`` (NaN when both are empty).
        tolerance_mm: Tolerance used for ``surface_dice``.
        pred_volume_mm3: Predicted foreground volume.
        ref_volume_mm3: Reference foreground volume.
        intersection_mm3: Volume of ``pred & ref``.
    """

    dice: float
    hd95_mm: float
    asd_mm: float
    surface_dice: float
    tolerance_mm: float
    pred_volume_mm3: float
    ref_volume_mm3: float
    intersection_mm3: float


def voxel_metrics_from_parts(
    *,
    n_pred: int,
    n_ref: int,
    n_inter: int,
    pred_surface: np.ndarray,
    ref_surface: np.ndarray,
    spacing_mm: Sequence[float],
    voxel_volume_mm3: float,
    tolerance_mm: float,
) -> VoxelMetrics:
    """Assemble :class:`VoxelMetrics` from voxel counts and surface voxel indices.

    Used by the study evaluation, which already has per-lesion surfaces and the
    overlap counts from its joint histogram, so no extra pass over the volume is
    needed.
    """
    dist = surface_distances_from_points(pred_surface, ref_surface, spacing_mm=spacing_mm)
    dice = math.nan if n_pred + n_ref == 0 else 2.0 * n_inter / (n_pred + n_ref)
    return VoxelMetrics(
        dice=dice,
        hd95_mm=hd95_from_distances(dist),
        asd_mm=asd_from_distances(dist),
        surface_dice=surface_dice_from_distances(
            dist,
            n_pred_surface=len(pred_surface),
            n_ref_surface=len(ref_surface),
            tolerance_mm=tolerance_mm,
        ),
        tolerance_mm=float(tolerance_mm),
        pred_volume_mm3=n_pred * voxel_volume_mm3,
        ref_volume_mm3=n_ref * voxel_volume_mm3,
        intersection_mm3=n_inter * voxel_volume_mm3,
    )


def compute_voxel_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    tolerance_mm: float = 1.0,
    voxel_volume_mm3: float | None = None,
) -> VoxelMetrics:
    """Every voxel-level metric at once, sharing one surface extraction.

    Args:
        pred: (X, Y, Z) predicted mask; non-zero is foreground.
        ref: (X, Y, Z) reference mask, same shape.
        spacing_mm: Voxel spacing along X, Y, Z in mm.
        tolerance_mm: Tolerance of the surface Dice, mm.
        voxel_volume_mm3: Volume of one voxel; defaults to the product of the
            spacing (pass ``|det(affine)|`` for sheared grids).

    Returns:
        :class:`VoxelMetrics`.
    """
    p, r = _check_pair(pred, ref)
    sp = _check_spacing(spacing_mm)
    vv = float(np.prod(sp)) if voxel_volume_mm3 is None else float(voxel_volume_mm3)
    box = _bbox(p | r)
    if box is None:
        empty = np.zeros((0, 3), np.int64)
        return voxel_metrics_from_parts(
            n_pred=0,
            n_ref=0,
            n_inter=0,
            pred_surface=empty,
            ref_surface=empty,
            spacing_mm=sp,
            voxel_volume_mm3=vv,
            tolerance_mm=tolerance_mm,
        )
    off = [s.start for s in box]
    pc, rc = p[box], r[box]
    return voxel_metrics_from_parts(
        n_pred=int(np.count_nonzero(pc)),
        n_ref=int(np.count_nonzero(rc)),
        n_inter=int(np.count_nonzero(pc & rc)),
        pred_surface=surface_voxels(pc, offset=off),
        ref_surface=surface_voxels(rc, offset=off),
        spacing_mm=sp,
        voxel_volume_mm3=vv,
        tolerance_mm=tolerance_mm,
    )
