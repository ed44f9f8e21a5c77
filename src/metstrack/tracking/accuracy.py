"""Tracking accuracy against ground-truth lesion identities.

Both inputs are per-study instance maps of one patient on the same grid per
study (the tracked maps and the true persistent-ID maps, e.g. the synthetic
cohort's ``ground_truth/instances`` mapped to the baseline grid).

Definitions:

- *Assignment*: in study ``t`` a true lesion ``k`` is covered by the tracked
  ID holding most of its voxels (ignoring background); ``none`` when no
  tracked voxel overlaps it (a missed observation).
- *True correspondence*: two consecutive observations ``(s_i, s_{i+1})`` of
  the same true lesion (the studies in which it is present, so a lesion absent
  in between still forms one correspondence across the gap).
- *Link accuracy* = correspondences whose two assignments are the same tracked
  ID (and not ``none``) / all true correspondences.
- *Identity switch*: along a true lesion's observations, each time its
  assigned tracked ID differs from its previous non-``none`` assignment.
  *Identity-switch rate* = switches / all true correspondences.
- *Link precision* (extra): the mirror image over tracked IDs: consecutive
  observations of a tracked ID whose majority true lesion is the same /
  all tracked correspondences. A new lesion wrongly given an old lesion's ID
  lowers it.
- *False merges* (extra): (study, tracked ID) pairs that cover more than one
  true lesion (e.g. two touching lesions segmented as one component).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from metstrack.errors import GeometryMismatchError
from metstrack.types import Volume


@dataclass(frozen=True)
class TrackingAccuracy:
    """Counts and rates of tracking accuracy (see module docs for definitions).

    Attributes:
        n_true_lesions: Distinct true lesion IDs.
        n_observations: True (lesion, study) observations.
        n_missed_observations: Observations without any tracked voxel.
        n_correspondences: True lesion-to-lesion correspondences.
        n_correct_links: Correspondences linked to the same tracked ID.
        n_identity_switches: Identity switches.
        n_pred_correspondences: Consecutive observations of tracked IDs.
        n_pred_correct: Of those, the ones following one true lesion.
        n_false_merges: (study, tracked ID) pairs covering several true lesions.
    """

    n_true_lesions: int = 0
    n_observations: int = 0
    n_missed_observations: int = 0
    n_correspondences: int = 0
    n_correct_links: int = 0
    n_identity_switches: int = 0
    n_pred_correspondences: int = 0
    n_pred_correct: int = 0
    n_false_merges: int = 0

    @property
    def link_accuracy(self) -> float:
        """Correct links / true correspondences (NaN when there are none)."""
        return self.n_correct_links / self.n_correspondences if self.n_correspondences else math.nan

    @property
    def identity_switch_rate(self) -> float:
        """Identity switches / true correspondences (NaN when there are none)."""
        if not self.n_correspondences:
            return math.nan
        return self.n_identity_switches / self.n_correspondences

    @property
    def link_precision(self) -> float:
        """Correct tracked correspondences / all tracked correspondences (NaN when none)."""
        if not self.n_pred_correspondences:
            return math.nan
        return self.n_pred_correct / self.n_pred_correspondences

    def __add__(self, other: TrackingAccuracy) -> TrackingAccuracy:
        return TrackingAccuracy(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def as_dict(self) -> dict[str, float]:
        """Counts and the three rates as a flat dict (for tables and JSON)."""
        d: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(
            link_accuracy=self.link_accuracy,
            identity_switch_rate=self.identity_switch_rate,
            link_precision=self.link_precision,
        )
        return d


def combine_accuracy(items: Iterable[TrackingAccuracy]) -> TrackingAccuracy:
    """Sum the counts of several patients' accuracies (rates are recomputed)."""
    total = TrackingAccuracy()
    for a in items:
        total = total + a
    return total


def _majority(
    a: np.ndarray, b: np.ndarray
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """For labels of ``a``: majority label of ``b`` under it; and vice versa; and b's cover counts."""
    both = (a > 0) & (b > 0)
    av = a[both].astype(np.int64)
    bv = b[both].astype(np.int64)
    if av.size == 0:
        return {}, {}, {}
    keys = av * (int(bv.max()) + 1) + bv
    uniq, counts = np.unique(keys, return_counts=True)
    ka, kb = uniq // (int(bv.max()) + 1), uniq % (int(bv.max()) + 1)
    best_ab: dict[int, tuple[int, int]] = {}
    best_ba: dict[int, tuple[int, int]] = {}
    n_cover: dict[int, int] = {}
    for x, y, c in zip(ka.tolist(), kb.tolist(), counts.tolist(), strict=True):
        # ties go to the lower label so the result is deterministic
        if x not in best_ab or c > best_ab[x][1] or (c == best_ab[x][1] and y < best_ab[x][0]):
            best_ab[x] = (y, c)
        if y not in best_ba or c > best_ba[y][1] or (c == best_ba[y][1] and x < best_ba[y][0]):
            best_ba[y] = (x, c)
        n_cover[y] = n_cover.get(y, 0) + 1
    return {k: v[0] for k, v in best_ab.items()}, {k: v[0] for k, v in best_ba.items()}, n_cover


def _array(x: Volume | np.ndarray) -> np.ndarray:
    return np.asarray(x.array if isinstance(x, Volume) else x)


def _sequence_links(obs: dict[int, list[tuple[int, int | None]]]) -> tuple[int, int, int]:
    """(correspondences, correct, switches) from per-ID lists of (study, assigned ID)."""
    n = correct = switches = 0
    for seq in obs.values():
        seq.sort()
        last: int | None = None
        for (_, a), (_, b) in zip(seq, seq[1:], strict=False):
            n += 1
            if a is not None and a == b:
                correct += 1
        for _, a in seq:
            if a is None:
                continue
            if last is not None and a != last:
                switches += 1
            last = a
    return n, correct, switches


def tracking_accuracy(
    tracked_maps: Sequence[Volume | np.ndarray],
    true_instance_maps: Sequence[Volume | np.ndarray],
) -> TrackingAccuracy:
    """Tracking accuracy of one patient's tracked maps against true identities.

    Args:
        tracked_maps: Per study, an integer (X, Y, Z) map of tracked lesion IDs
            (0 background), time order.
        true_instance_maps: Per study, the integer (X, Y, Z) map of true
            persistent lesion IDs on the same grid as the tracked map of that
            study.

    Returns:
        A :class:`TrackingAccuracy` (sum several with ``+`` or
        :func:`combine_accuracy`).

    Raises:
        GeometryMismatchError: Different numbers of studies or shapes.
    """
    if len(tracked_maps) != len(true_instance_maps):
        raise GeometryMismatchError(
            f"{len(tracked_maps)} tracked maps but {len(true_instance_maps)} true instance maps"
        )
    true_obs: dict[int, list[tuple[int, int | None]]] = {}
    pred_obs: dict[int, list[tuple[int, int | None]]] = {}
    n_obs = missed = false_merges = 0
    for t, (p, g) in enumerate(zip(tracked_maps, true_instance_maps, strict=True)):
        pa, ga = _array(p), _array(g)
        if pa.shape != ga.shape:
            raise GeometryMismatchError(
                f"study {t}: tracked map shape {pa.shape} differs from true map shape {ga.shape}; "
                "map both onto one grid first"
            )
        true_to_pred, pred_to_true, cover = _majority(ga, pa)
        for k in np.unique(ga[ga > 0]).tolist():
            n_obs += 1
            a = true_to_pred.get(int(k))
            missed += a is None
            true_obs.setdefault(int(k), []).append((t, a))
        for j in np.unique(pa[pa > 0]).tolist():
            pred_obs.setdefault(int(j), []).append((t, pred_to_true.get(int(j))))
        false_merges += sum(1 for c in cover.values() if c > 1)
    n, correct, switches = _sequence_links(true_obs)
    pn, pcorrect, _ = _sequence_links(pred_obs)
    return TrackingAccuracy(
        n_true_lesions=len(true_obs),
        n_observations=n_obs,
        n_missed_observations=missed,
        n_correspondences=n,
        n_correct_links=correct,
        n_identity_switches=switches,
        n_pred_correspondences=pn,
        n_pred_correct=pcorrect,
        n_false_merges=false_merges,
    )
