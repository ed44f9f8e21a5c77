"""Pair scores and the optimal assignment against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np

from metstrack.core.lesions import label_components, lesion_table
from metstrack.tracking.match import link_cost, optimal_links, pair_scores


def _random_labels(rng, shape=(20, 20, 20)):
    m = rng.random(shape) > 0.93
    labels, _ = label_components(m)
    return labels, lesion_table(None, np.eye(4), labels=labels)


def test_pair_scores_match_brute_force(rng):
    a, la = _random_labels(rng)
    b, lb = _random_labels(rng)
    sc = pair_scores(a, la, b, lb)
    for i, x in enumerate(la[:15]):
        for j, y in enumerate(lb[:15]):
            inter = int(((a == x.label) & (b == y.label)).sum())
            assert sc.intersection_voxels[i, j] == inter
            assert np.isclose(sc.overlap[i, j], inter / min(x.voxel_count, y.voxel_count))
            d = np.linalg.norm(np.subtract(x.centroid_mm, y.centroid_mm))
            assert np.isclose(sc.distance_mm[i, j], d)


def test_pair_scores_empty_sides():
    z = np.zeros((4, 4, 4), dtype=np.uint32)
    sc = pair_scores(z, [], z, [])
    assert sc.overlap.shape == (0, 0)
    assert optimal_links(*link_cost(sc, max_distance_mm=10.0)) == []


def _brute(cost, ok, u):
    p, c = cost.shape
    best, best_links = np.inf, []
    pairs = [(i, j) for i in range(p) for j in range(c) if ok[i, j]]
    for k in range(min(p, c) + 1):
        for combo in itertools.combinations(pairs, k):
            rows = [i for i, _ in combo]
            cols = [j for _, j in combo]
            if len(set(rows)) < k or len(set(cols)) < k:
                continue
            total = sum(cost[i, j] for i, j in combo) + u * (p - k) + u * (c - k)
            if total < best - 1e-12:
                best, best_links = total, sorted(combo)
    return best, best_links


def test_optimal_links_match_brute_force(rng):
    for _ in range(40):
        p, c = rng.integers(0, 4, size=2)
        cost = rng.random((p, c)) * 2.0
        ok = rng.random((p, c)) > 0.3
        links = optimal_links(cost, ok, unlinked_cost=1.0)
        got = sum(cost[i, j] for i, j in links) + (p - len(links) + c - len(links)) * 1.0
        best, _ = _brute(cost, ok, 1.0)
        assert np.isclose(got, best)
        assert all(ok[i, j] for i, j in links)
