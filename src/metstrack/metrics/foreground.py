"""One labelled pass over a mask's foreground, shared by every study metric.

Lesion-wise evaluation needs, for both masks, the connected components with
their voxel counts, bounding boxes and centroids, the surface voxels of each
component, and the pairwise overlaps. :func:`label_foreground` gets all of them
from one connected-components labelling (cc3d) plus work proportional to the
number of *foreground* voxels: the foreground's flat indices are listed once
(``np.flatnonzero`` of a bool mask, about 1 ms for 192^3) and every statistic
is a ``bincount`` or a sorted reduction over that list. No further pass over
the whole volume is made, so the cost is flat in the number of lesions.

The results equal the straightforward ones exactly
(:func:`metstrack.core.lesions.label_map` with ``cc3d.statistics``, and
:func:`metstrack.metrics.detection.component_surfaces` with an erosion per
lesion), which the tests check on random masks.

Surface rule (the one of :mod:`metstrack.metrics.voxel`): a foreground voxel
is on the surface when one of its 6 face-neighbours is background or outside
the array. Face-neighbours in the mask always belong to the same component,
so the mask's surface, split by label, is each component's surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metstrack.core.lesions import LabelMap, label_components
from metstrack.errors import LabelError


@dataclass(frozen=True, eq=False)
class LabelledMask:
    """A binary mask labelled once, with what every metric of a study needs.

    Attributes:
        map: The components with voxel counts, bounding boxes and centroids.
        foreground: int64 (F,) C-order flat indices of the foreground voxels, increasing.
        foreground_labels: uint32 (F,) component label of each foreground voxel.
        surfaces: One int64 (N, 3) array of surface voxel indices per label (index 0
            empty), in raster order, as :func:`~metstrack.metrics.detection.component_surfaces`.
    """

    map: LabelMap
    foreground: np.ndarray
    foreground_labels: np.ndarray
    surfaces: list[np.ndarray]


def _boundary(coords: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(coords[0].shape, dtype=bool)
    for c, n in zip(coords, shape, strict=True):
        out |= (c == 0) | (c == n - 1)
    return out


def label_foreground(mask: np.ndarray, *, connectivity: int = 26) -> LabelledMask:
    """Label ``mask`` and gather counts, boxes, centroids and surfaces from its foreground.

    Args:
        mask: (X, Y, Z) binary mask; non-zero voxels are foreground.
        connectivity: 6, 18 or 26.

    Returns:
        A :class:`LabelledMask`.

    Raises:
        LabelError: The mask is not 3D.
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise LabelError(f"expected a 3D mask, found shape {m.shape}")
    if m.dtype != np.bool_:
        m = m != 0
    m = np.ascontiguousarray(m)
    labels, n = label_components(m, connectivity=connectivity)
    shape = m.shape
    fg = np.flatnonzero(m)
    coords = np.unravel_index(fg, shape)
    lab = labels[coords]
    counts = np.bincount(lab, minlength=n + 1).astype(np.int64)
    counts[0] = m.size - fg.size  # the background, as label_map reports it
    boxes = np.zeros((n + 1, 6), dtype=np.int64)
    cents = np.full((n + 1, 3), np.nan)
    surfaces: list[np.ndarray] = [np.zeros((0, 3), np.int64)]
    if n:
        order = np.argsort(lab, kind="stable")  # raster order kept within a label
        starts = np.concatenate([[0], np.cumsum(counts[1:])[:-1]])  # labels 1..n, sorted
        for ax in range(3):
            c_sorted = coords[ax][order]
            boxes[1:, ax] = np.minimum.reduceat(c_sorted, starts)
            boxes[1:, ax + 3] = np.maximum.reduceat(c_sorted, starts) + 1
            cents[1:, ax] = np.bincount(lab, weights=coords[ax], minlength=n + 1)[1:] / counts[1:]
        # surface: a face-neighbour outside the mask (or the array)
        flat = m.reshape(-1)
        surf = _boundary(coords, shape)
        inner = np.flatnonzero(~surf)
        fi = fg[inner]
        sy, sx = shape[2], shape[1] * shape[2]
        full = flat[fi - 1] & flat[fi + 1] & flat[fi - sy] & flat[fi + sy]
        full &= flat[fi - sx] & flat[fi + sx]
        surf[inner] = ~full
        s_idx = order[surf[order]]  # surface voxels, grouped by label, raster order within
        pts = np.stack([c[s_idx] for c in coords], axis=1).astype(np.int64)
        s_counts = np.bincount(lab[s_idx], minlength=n + 1)
        surfaces.extend(np.split(pts, np.cumsum(s_counts[1:])[:-1]))
    lm = LabelMap(labels=labels, n=n, voxel_counts=counts, bboxes=boxes, centroids_voxel=cents)
    return LabelledMask(map=lm, foreground=fg, foreground_labels=lab, surfaces=surfaces)


def foreground_overlaps(pred: LabelledMask, ref: LabelledMask) -> dict[tuple[int, int], int]:
    """Voxel overlap of every (pred label, ref label) pair that overlaps, from the foreground lists.

    Equals :func:`metstrack.metrics.matching.pair_overlaps` without its passes
    over the volume.
    """
    if pred.map.labels.shape != ref.map.labels.shape:
        raise ValueError(
            f"pred and ref shapes differ: {pred.map.labels.shape} vs {ref.map.labels.shape}"
        )
    if pred.map.n == 0 or ref.map.n == 0:
        return {}
    common, ip, ir = np.intersect1d(
        pred.foreground, ref.foreground, assume_unique=True, return_indices=True
    )
    if common.size == 0:
        return {}
    width = ref.map.n + 1
    keys = pred.foreground_labels[ip].astype(np.int64) * width + ref.foreground_labels[ir]
    nz, counts = np.unique(keys, return_counts=True)
    return {(int(k // width), int(k % width)): int(c) for k, c in zip(nz, counts, strict=True)}
