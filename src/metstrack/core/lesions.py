"""Lesion tables: connected components of a mask with physical measurements.

A lesion is one connected component of a binary mask (26-connectivity by
default). Volumes are voxel counts times the voxel volume from the affine
(mm3), centroids are mapped to world coordinates (RAS, mm) through the affine,
and the longest diameter is the largest distance between two voxel centres
(mm, anisotropic spacing respected; 0 for a single voxel).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
        # coplanar or collinear points: fall back to all points
        with contextlib.suppress(QhullError):
            pts = pts[ConvexHull(pts).vertices]
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


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Connected components of a mask with their voxel counts and bounding boxes.

    Attributes:
        labels: uint32 (X, Y, Z) array, 0 background, components 1..n.
        n: Number of components.
        voxel_counts: int64 (n + 1,) voxels per label (index 0 is the background).
        bboxes: int64 (n + 1, 6) half-open boxes ``(x0, y0, z0, x1, y1, z1)`` per label
            (row 0 unused).
        centroids_voxel: float64 (n + 1, 3) centroid of each label in voxel indices
            (X, Y, Z); NaN for absent labels and row 0.
    """

    labels: np.ndarray
    n: int
    voxel_counts: np.ndarray
    bboxes: np.ndarray
    centroids_voxel: np.ndarray

    def box(self, label: int, *, margin: int = 0) -> tuple[slice, slice, slice]:
        """Slices of ``label``'s bounding box grown by ``margin`` voxels, clipped to the array."""
        b = self.bboxes[label]
        shape = self.labels.shape
        return tuple(
            slice(max(int(b[ax]) - margin, 0), min(int(b[ax + 3]) + margin, shape[ax]))
            for ax in range(3)
        )  # type: ignore[return-value]


def label_map(
    mask: np.ndarray, *, connectivity: int = 26, labels: np.ndarray | None = None
) -> LabelMap:
    """Label a mask and gather per-component voxel counts and bounding boxes in one pass.

    Args:
        mask: (X, Y, Z) binary mask; non-zero is foreground (ignored when ``labels`` is given).
        connectivity: 6, 18 or 26.
        labels: An existing (X, Y, Z) label map (0 background, labels 1..n) to use instead.

    Returns:
        A :class:`LabelMap`.
    """
    if labels is None:
        labels, n = label_components(mask, connectivity=connectivity)
    else:
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise LabelError(f"expected a 3D label map, found shape {labels.shape}")
        labels = labels.astype(np.uint32, copy=False)
        n = int(labels.max()) if labels.size else 0
    counts = np.zeros(n + 1, dtype=np.int64)
    boxes = np.zeros((n + 1, 6), dtype=np.int64)
    cents = np.full((n + 1, 3), np.nan)
    if n:
        stats = cc3d.statistics(labels, no_slice_conversion=True)
        c = np.asarray(stats["voxel_counts"], dtype=np.int64)
        counts[: len(c)] = c[: n + 1]
        bb = np.asarray(stats["bounding_boxes"], dtype=np.int64).reshape(-1, 6)[: n + 1]
        # cc3d gives inclusive (x0, x1, y0, y1, z0, z1); store half-open (x0, y0, z0, x1, y1, z1)
        boxes[: len(bb)] = bb[:, [0, 2, 4, 1, 3, 5]] + np.array([0, 0, 0, 1, 1, 1])
        boxes[counts == 0] = 0  # labels absent from an instance map
        cc = np.asarray(stats["centroids"], dtype=np.float64).reshape(-1, 3)[: n + 1]
        cents[: len(cc)] = cc
        cents[counts == 0] = np.nan
        cents[0] = np.nan
    return LabelMap(labels=labels, n=n, voxel_counts=counts, bboxes=boxes, centroids_voxel=cents)
