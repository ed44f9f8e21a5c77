"""Lesion tables: connected components of a mask with physical measurements.

A lesion is one connected component of a binary mask (26-connectivity by
default). Volumes are voxel counts times the voxel volume from the affine
(mm3), centroids are mapped to world coordinates (RAS, mm) through the affine,
and the longest diameter is the largest distance between two voxel centres
(mm, anisotropic spacing respected; 0 for a single voxel).
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from metstrack.errors import LabelError
from metstrack.types import Lesion

CONNECTIVITIES = (6, 18, 26)


def label_components(mask: np.ndarray, *, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary mask.

    Args:
        mask: (X, Y, Z) array; non-zero voxels are foreground.
        connectivity: 6, 18 or 26.

    Returns:
        ``(labels, n)``: a uint32 (X, Y, Z) array with components numbered 1..n
        in cc3d's raster order, and the number of components.
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity}")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise LabelError(f"expected a 3D mask, found shape {mask.shape}")
    labels, n = cc3d.connected_components(
        mask != 0, connectivity=connectivity, return_N=True, out_dtype=np.uint32
    )
    return labels, int(n)


def longest_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest pairwise distance among points (N, 3) in mm; 0 for fewer than two points."""
    pts = np.asarray(points_mm, dtype=np.float64)
    if len(pts) < 2:
        return 0.0
    if len(pts) > 64:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # coplanar or collinear points: fall back to all points
            pass
    if len(pts) > 4000:  # degenerate hull on huge flat lesions; subsample deterministically
        pts = pts[:: int(np.ceil(len(pts) / 4000))]
    return float(pdist(pts).max())


def lesion_table(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    connectivity: int = 26,
    labels: np.ndarray | None = None,
) -> list[Lesion]:
    """Measure every lesion of a mask.

    Args:
        mask: (X, Y, Z) binary mask (ignored when ``labels`` is given).
        affine: (4, 4) voxel-to-world matrix (RAS, mm).
        connectivity: 6, 18 or 26 (ignored when ``labels`` is given).
        labels: An existing (X, Y, Z) integer label map (0 background) to measure
            instead of labelling ``mask`` (e.g. a tracked instance map).

    Returns:
        One :class:`~metstrack.types.Lesion` per label, ordered by label.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if labels is None:
        labels, _ = label_components(mask, connectivity=connectivity)
    labels = np.asarray(labels)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    stats = cc3d.statistics(labels.astype(np.uint32, copy=False), no_slice_conversion=True)
    counts = stats["voxel_counts"]
    bbs = stats["bounding_boxes"]
    cents = stats["centroids"]
    out: list[Lesion] = []
    for lab in range(1, len(counts)):
        n = int(counts[lab])
        if n == 0:
            continue
        x0, x1, y0, y1, z0, z1 = (int(v) for v in bbs[lab])
        bbox = (x0, y0, z0, x1 + 1, y1 + 1, z1 + 1)
        crop = labels[bbox[0] : bbox[3], bbox[1] : bbox[4], bbox[2] : bbox[5]] == lab
        if n > 1:
            surface = crop & ~ndimage.binary_erosion(crop)
            idx = np.argwhere(surface) + np.array(bbox[:3])
        else:
            idx = np.argwhere(crop) + np.array(bbox[:3])
        pts_mm = idx @ affine[:3, :3].T + affine[:3, 3]
        c_vox = np.asarray(cents[lab], dtype=np.float64)
        c_mm = affine[:3, :3] @ c_vox + affine[:3, 3]
        out.append(
            Lesion(
                label=lab,
                voxel_count=n,
                volume_mm3=n * voxel_mm3,
                centroid_mm=(float(c_mm[0]), float(c_mm[1]), float(c_mm[2])),
                centroid_voxel=(float(c_vox[0]), float(c_vox[1]), float(c_vox[2])),
                longest_diameter_mm=longest_diameter_mm(pts_mm),
                bbox=bbox,
            )
        )
    return out
