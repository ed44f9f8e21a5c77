"""Bidimensional (RANO-BM / WHO style) lesion measurement in the slice plane.

A radiologist measures a metastasis on one axial image: the longest diameter
across the lesion, then the longest diameter perpendicular to it. On a voxel
mask this becomes, for the slices (constant Z index) of the grid:

- **long axis**: the largest distance between two voxel centres of the lesion
  lying in the same slice, over every slice (the same voxel-centre convention
  as :func:`metstrack.core.lesions.longest_diameter_mm`, restricted to one
  plane; 0 for a single voxel);
- **short axis**: in that slice, the lesion's voxel centres are projected on
  the long axis direction ``u`` and on the in-plane perpendicular ``v``; centres
  whose ``u`` projection falls within half the in-plane voxel size of a
  position ``t`` form a chord across the lesion at ``t``; the short axis is the
  widest such chord (its ``v`` extent), drawn exactly perpendicular to the
  long axis at ``t``.

Both segments are returned with their end points in world millimetres so that
a report can draw them (DICOM SCOORD3D POLYLINE). "Axial" means the slice
plane of the grid the mask lies on: for an axially acquired series (the usual
brain-metastasis T1 post-contrast) that is the axial plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist, squareform


@dataclass(frozen=True)
class Bidimensional:
    """Long and short axis of one lesion in one slice.

    Attributes:
        slice_index: Z index of the slice measured.
        long_axis_mm: Longest in-plane diameter (mm).
        short_axis_mm: Longest diameter perpendicular to it (mm).
        long_axis_points_mm: float64 (2, 3) end points of the long axis, world (RAS) mm.
        short_axis_points_mm: float64 (2, 3) end points of the short axis, world (RAS) mm.
    """

    slice_index: int
    long_axis_mm: float
    short_axis_mm: float
    long_axis_points_mm: np.ndarray
    short_axis_points_mm: np.ndarray


def _slice_points(sel: np.ndarray, k: int, affine: np.ndarray) -> np.ndarray:
    sl = sel[:, :, k]
    edge = sl & ~ndimage.binary_erosion(sl) if sl.sum() > 2 else sl
    ij = np.argwhere(edge)
    vox = np.column_stack([ij, np.full(len(ij), k)]).astype(np.float64)
    return vox @ affine[:3, :3].T + affine[:3, 3]


def bidimensional_mm(mask: np.ndarray, affine: np.ndarray) -> Bidimensional | None:
    """Measure the long and perpendicular short axis of a lesion in the slice plane.

    Args:
        mask: (X, Y, Z) boolean (or 0/1) mask of one lesion.
        affine: (4, 4) voxel-to-world matrix (RAS, mm).

    Returns:
        The measurement, or ``None`` when the mask is empty.
    """
    sel = np.asarray(mask) != 0
    affine = np.asarray(affine, dtype=np.float64)
    slices = np.flatnonzero(sel.any(axis=(0, 1)))
    if slices.size == 0:
        return None
    best: tuple[float, int, np.ndarray] = (-1.0, -1, np.zeros((2, 3)))
    for k in slices:
        pts = _slice_points(sel, int(k), affine)
        if len(pts) < 2:
            cand = (0.0, int(k), np.stack([pts[0], pts[0]]))
        else:
            d = squareform(pdist(pts))
            i, j = np.unravel_index(int(np.argmax(d)), d.shape)
            cand = (float(d[i, j]), int(k), np.stack([pts[i], pts[j]]))
        if cand[0] > best[0] + 1e-9:
            best = cand
    long_mm, k, ends = best
    if long_mm == 0.0:
        z = np.zeros((2, 3)) + ends[0]
        return Bidimensional(k, 0.0, 0.0, ends, z)
    u = (ends[1] - ends[0]) / long_mm
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    v = np.cross(normal, u)
    v /= np.linalg.norm(v)
    ij = np.argwhere(sel[:, :, k])
    vox = np.column_stack([ij, np.full(len(ij), k)]).astype(np.float64)
    pts = vox @ affine[:3, :3].T + affine[:3, 3]
    rel = pts - ends[0]
    pu, pv = rel @ u, rel @ v
    in_plane = np.linalg.norm(affine[:3, :2], axis=0)
    half = 0.5 * float(in_plane.min())
    short_mm, t_best, v_lo, v_hi = 0.0, float(pu.mean()), 0.0, 0.0
    for t in np.unique(np.round(pu, 6)):
        near = np.abs(pu - t) <= half + 1e-9
        lo, hi = float(pv[near].min()), float(pv[near].max())
        if hi - lo > short_mm + 1e-9:
            short_mm, t_best, v_lo, v_hi = hi - lo, float(t), lo, hi
    base = ends[0] + t_best * u
    short_ends = np.stack([base + v_lo * v, base + v_hi * v])
    return Bidimensional(k, long_mm, short_mm, ends, short_ends)
