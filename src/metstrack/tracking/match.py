"""Linking the lesions of two studies on a common grid.

Cost of linking previous lesion ``i`` to current lesion ``j``::

    cost(i, j) = (1 - overlap(i, j)) + distance_weight * min(d(i, j) / max_distance_mm, 1)

with ``overlap = |A_i & B_j| / min(|A_i|, |B_j|)`` (the overlap coefficient,
which stays 1 for a lesion that grows or shrinks around its old extent) and
``d`` the distance of the centroids in mm (through the affine, so anisotropic
spacing is respected). A pair is *admissible* when it overlaps
(``overlap >= min_overlap_fraction``) or when ``d <= max_distance_mm``. The
one-to-one links minimise the summed cost over admissible pairs, where leaving
a lesion unlinked costs ``(1 + distance_weight) / 2`` (Hungarian algorithm,
:func:`scipy.optimize.linear_sum_assignment`, on the cost matrix augmented with
one "unlinked" option per lesion). Every admissible pair is worth linking on
its own (its cost is at most ``1 + distance_weight`` at the distance limit), but
one good link beats two poor ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from metstrack.types import Lesion

#: Cost given to inadmissible pairs (larger than any sum of admissible costs).
_FORBIDDEN = 1e9


@dataclass(frozen=True)
class PairScores:
    """Overlap and distance of every (previous, current) lesion pair.

    Attributes:
        intersection_voxels: int64 (P, C) shared voxel counts.
        overlap: float64 (P, C) overlap coefficients in [0, 1].
        distance_mm: float64 (P, C) centroid distances in mm.
    """

    intersection_voxels: np.ndarray
    overlap: np.ndarray
    distance_mm: np.ndarray


def pair_scores(
    prev_labels: np.ndarray,
    prev: Sequence[Lesion],
    cur_labels: np.ndarray,
    cur: Sequence[Lesion],
) -> PairScores:
    """Overlap and centroid distance of every pair of lesions of two label maps.

    Args:
        prev_labels: (X, Y, Z) integer label map of the earlier study.
        prev: Lesions of ``prev_labels`` (``Lesion.label`` indexes the map).
        cur_labels: (X, Y, Z) integer label map of the later study (same grid).
        cur: Lesions of ``cur_labels``.

    Returns:
        :class:`PairScores` with (len(prev), len(cur)) arrays.
    """
    p, c = len(prev), len(cur)
    inter = np.zeros((p, c), dtype=np.int64)
    if p and c:
        max_p = int(prev_labels.max())
        max_c = int(cur_labels.max())
        both = (prev_labels > 0) & (cur_labels > 0)
        a = prev_labels[both].astype(np.int64)
        b = cur_labels[both].astype(np.int64)
        full = np.bincount(a * (max_c + 1) + b, minlength=(max_p + 1) * (max_c + 1))
        full = full.reshape(max_p + 1, max_c + 1)
        pi = np.array([les.label for les in prev], dtype=np.int64)
        ci = np.array([les.label for les in cur], dtype=np.int64)
        inter = full[np.ix_(pi, ci)]
    vp = np.array([les.voxel_count for les in prev], dtype=np.float64).reshape(-1, 1)
    vc = np.array([les.voxel_count for les in cur], dtype=np.float64).reshape(1, -1)
    denom = np.minimum(vp, vc) if p and c else np.zeros((p, c))
    overlap = np.divide(inter, denom, out=np.zeros((p, c)), where=denom > 0)
    cp = np.array([les.centroid_mm for les in prev], dtype=np.float64).reshape(p, 3)
    cc = np.array([les.centroid_mm for les in cur], dtype=np.float64).reshape(c, 3)
    dist = np.linalg.norm(cp[:, None, :] - cc[None, :, :], axis=-1) if p and c else np.zeros((p, c))
    return PairScores(inter, overlap, dist)


def link_cost(
    scores: PairScores,
    *,
    max_distance_mm: float,
    distance_weight: float = 1.0,
    min_overlap_fraction: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Cost matrix and admissibility mask of a :class:`PairScores`.

    Returns:
        ``(cost, admissible)``: float64 (P, C) costs (see module docs) and a
        bool (P, C) mask of admissible pairs.
    """
    overlaps = scores.overlap >= min_overlap_fraction
    admissible = overlaps | (scores.distance_mm <= max_distance_mm)
    # capped so that an overlapping pair far apart in centroid (a lesion growing
    # lopsidedly) never costs more than leaving both lesions unlinked
    dist_term = np.minimum(scores.distance_mm / max(max_distance_mm, 1e-9), 1.0)
    cost = (1.0 - scores.overlap) + distance_weight * dist_term
    return cost, admissible


def optimal_links(
    cost: np.ndarray, admissible: np.ndarray, *, unlinked_cost: float = 1.0
) -> list[tuple[int, int]]:
    """One-to-one links minimising the summed cost, leaving a lesion unlinked allowed.

    The assignment is solved on the matrix augmented with one "unlinked" option
    per lesion (the usual dummy rows and columns), each costing
    ``unlinked_cost``. A link therefore competes with leaving both of its
    lesions unlinked (``2 * unlinked_cost``), so one good link is preferred to
    two poor ones: without that, a minimum-cost *maximum* matching would chain a
    persisting lesion to a nearby new one just to link one more pair.

    Args:
        cost: float64 (P, C) cost matrix.
        admissible: bool (P, C); inadmissible pairs are never returned.
        unlinked_cost: Cost of leaving one lesion unlinked.

    Returns:
        ``(i, j)`` index pairs sorted by ``i``.
    """
    if cost.size == 0 or not admissible.any():
        return []
    p, c = cost.shape
    big = _FORBIDDEN
    aug = np.full((p + c, c + p), big)
    aug[:p, :c] = np.where(admissible, cost, big)
    aug[:p, c:] = np.where(np.eye(p, dtype=bool), unlinked_cost, big)
    aug[p:, :c] = np.where(np.eye(c, dtype=bool), unlinked_cost, big)
    aug[p:, c:] = 0.0
    rows, cols = linear_sum_assignment(aug)
    return sorted(
        (int(i), int(j))
        for i, j in zip(rows, cols, strict=True)
        if i < p and j < c and admissible[i, j]
    )
