"""Persistent lesion identities across a patient's studies.

Algorithm (per patient, studies in time order, all masks on the baseline grid):

1. Each study's mask is split into lesions (connected components,
   :func:`metstrack.core.lesions.label_components`) and measured
   (:func:`metstrack.core.lesions.lesion_table`).
2. Baseline lesions get IDs 1..n in component order.
3. For each follow-up ``t``, lesions of ``t - 1`` and ``t`` are linked one-to-one
   by the optimal assignment of :mod:`metstrack.tracking.match`; a linked
   lesion keeps its ID.
4. Splits: an unlinked current lesion that overlaps a previous lesion already
   linked elsewhere is a fragment of it: it gets a new ID with ``split_from``
   set to the parent's ID.
5. Merges: an unlinked previous lesion that overlaps a current lesion linked to
   another previous lesion has merged into it: its track ends and the
   coalesced lesion records it in ``merged_from``.
6. Look-back: still-unlinked current lesions are matched (same cost, same
   optimal assignment) against lesions last seen up to ``lookback_studies``
   studies earlier and missed since; a match keeps the old ID and is
   "reappeared".
7. Anything left is a new lesion with a new ID.

IDs are never reused within a patient, so the tracked label maps carry the
same ID for the same lesion in every study.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from metstrack.core.grid import Grid
from metstrack.core.lesions import label_components, lesion_table
from metstrack.core.mapping import map_to_baseline
from metstrack.errors import GeometryMismatchError
from metstrack.tracking.config import MatchingConfig, TrackConfig
from metstrack.tracking.match import PairScores, link_cost, optimal_links, pair_scores
from metstrack.tracking.records import StudyLesions, TrackEvent, TrackingResult
from metstrack.tracking.trajectory import build_burden, build_trajectories
from metstrack.types import Lesion, Volume

log = logging.getLogger(__name__)


def _binary(vol: Volume) -> Volume:
    return vol.with_array((np.asarray(vol.array) != 0).astype(np.uint8))


def to_common_grid(
    masks: Sequence[Volume],
    *,
    baseline_to_study: Sequence[np.ndarray | None] | None = None,
    atol_mm: float = 1e-3,
    baseline_grid: Volume | Grid | None = None,
) -> list[Volume]:
    """Bring a patient's masks onto one baseline grid.

    Args:
        masks: One (X, Y, Z) mask per study, time order; non-zero = lesion.
        baseline_to_study: Per study, the 4x4 world transform taking a baseline
            point to the same anatomy in that study (the
            :mod:`metstrack.core.spatial` convention), or ``None`` for the
            identity. When omitted, every mask must already share one grid.
        atol_mm: Tolerance on the affines (mm).
        baseline_grid: The grid to map onto (e.g. the preprocessed baseline grid
            of :class:`metstrack.core.mapping.StudyTransform`); default: the
            first mask's grid.

    Returns:
        uint8 binary masks on the baseline grid.

    Raises:
        GeometryMismatchError: Without transforms, a mask's grid differs from the
            baseline's; or the number of transforms differs from the masks'.
    """
    if not masks:
        return []
    ref = masks[0]
    if baseline_to_study is None:
        for i, m in enumerate(masks[1:], start=1):
            if not ref.same_grid(m, atol_mm=atol_mm):
                raise GeometryMismatchError(
                    f"study {i} mask {m.path or '<array>'} has {m.describe_grid()}, but the "
                    f"baseline mask {ref.path or '<array>'} has {ref.describe_grid()}: tracking "
                    "needs masks co-registered on one grid; register the studies to the "
                    "baseline with `metstrack preprocess` (through-time registration) and track "
                    "the registered masks, or pass the baseline_to_study transforms "
                    "(`metstrack track --transforms`)"
                )
        if baseline_grid is None:
            return [_binary(m) for m in masks]
        baseline_to_study = [None] * len(masks)
    if len(baseline_to_study) != len(masks):
        raise GeometryMismatchError(
            f"{len(masks)} masks but {len(baseline_to_study)} baseline_to_study transforms"
        )
    target = Grid.of(ref if baseline_grid is None else baseline_grid)
    out = []
    for m, t in zip(masks, baseline_to_study, strict=True):
        mb = _binary(m)
        tf = np.eye(4) if t is None else np.asarray(t, dtype=np.float64)
        if np.allclose(tf, np.eye(4), atol=1e-9) and Grid.of(mb).same_as(target, atol_mm=atol_mm):
            out.append(mb)
        else:
            out.append(map_to_baseline(mb, target, tf, order=0))
    return out


def _measure(mask: Volume, cfg: TrackConfig) -> tuple[np.ndarray, list[Lesion]]:
    labels, _ = label_components(mask.array, connectivity=cfg.matching.connectivity)
    lesions = lesion_table(None, mask.affine, labels=labels)  # type: ignore[arg-type]
    if cfg.matching.min_volume_mm3 > 0:
        keep = [les for les in lesions if les.volume_mm3 >= cfg.matching.min_volume_mm3]
        if len(keep) != len(lesions):
            lut = np.zeros(int(labels.max()) + 1, dtype=labels.dtype)
            for les in keep:
                lut[les.label] = les.label
            labels = lut[labels]
        lesions = keep
    return labels, lesions


def _check_inputs(
    n: int, days_from_baseline: Sequence[float], study_ids: Sequence[str] | None
) -> tuple[list[float], tuple[str, ...]]:
    """Days as floats and StudyIDs (default ``S0, S1...``), or ValueError on a mismatch."""
    days = [float(d) for d in days_from_baseline]
    if len(days) != n:
        raise ValueError(f"{n} masks but {len(days)} days_from_baseline")
    if any(b < a for a, b in zip(days, days[1:], strict=False)):
        raise ValueError(f"days_from_baseline must be in time order, got {days}")
    sids = tuple(study_ids) if study_ids is not None else tuple(f"S{i}" for i in range(n))
    if len(sids) != n:
        raise ValueError(f"{n} masks but {len(sids)} study_ids")
    return days, sids


@dataclass
class _Tracks:
    """Everything the tracker knows after the studies seen so far (grows study by study).

    Attributes:
        labels: Per study, its (X, Y, Z) component label map.
        lesions: Per study, its measured components (``Lesion.label`` = component label).
        ids: Per study, component label -> persistent lesion ID.
        last_seen: Lesion ID -> (study index, component) of its last appearance.
        split_from: Fragment ID -> parent ID.
        merged_into: Absorbed ID -> (study index, coalesced ID).
        reappeared: (study index, lesion ID) pairs linked by look-back.
        events: Splits, merges and reappearances in time order.
        next_id: The next unused lesion ID (IDs are never reused).
    """

    labels: list[np.ndarray] = field(default_factory=list)
    lesions: list[list[Lesion]] = field(default_factory=list)
    ids: list[dict[int, int]] = field(default_factory=list)
    last_seen: dict[int, tuple[int, Lesion]] = field(default_factory=dict)
    split_from: dict[int, int] = field(default_factory=dict)
    merged_into: dict[int, tuple[int, int]] = field(default_factory=dict)
    reappeared: set[tuple[int, int]] = field(default_factory=set)
    events: list[TrackEvent] = field(default_factory=list)
    next_id: int = 1

    def new_id(self) -> int:
        """A fresh lesion ID."""
        self.next_id += 1
        return self.next_id - 1

    def add_study(self, t: int, lab: np.ndarray, les: list[Lesion], assign: dict[int, int]) -> None:
        """Record study ``t`` once every component has its ID."""
        for cl in les:
            self.last_seen[assign[cl.label]] = (t, cl)
        self.labels.append(lab)
        self.lesions.append(les)
        self.ids.append(assign)


@dataclass(frozen=True)
class _Links:
    """How a study's components link to the previous study's (one-to-one step).

    Attributes:
        assign: Component label -> lesion ID of its linked previous lesion.
        linked_prev: Indices of the previous study's linked lesions.
        scores: Overlap and distance of every (previous, current) pair.
    """

    assign: dict[int, int]
    linked_prev: frozenset[int]
    scores: PairScores


def _link_previous(
    tracks: _Tracks, lab: np.ndarray, les: list[Lesion], m: MatchingConfig
) -> _Links:
    """Step 3: one-to-one optimal links between the previous study's lesions and these."""
    prev, prev_lab, prev_ids = tracks.lesions[-1], tracks.labels[-1], tracks.ids[-1]
    scores = pair_scores(prev_lab, prev, lab, les)
    cost, ok = link_cost(
        scores,
        max_distance_mm=m.max_distance_mm,
        distance_weight=m.distance_weight,
        min_overlap_fraction=m.min_overlap_fraction,
    )
    links = optimal_links(cost, ok, unlinked_cost=0.5 * (1.0 + m.distance_weight))
    assign = {les[j].label: prev_ids[prev[i].label] for i, j in links}
    return _Links(assign, frozenset(i for i, _ in links), scores)


def _split_parents(
    tracks: _Tracks, les: list[Lesion], links: _Links, m: MatchingConfig
) -> list[tuple[int, int]]:
    """Step 4: (component label, parent ID) of unlinked lesions overlapping a linked one."""
    prev, prev_ids = tracks.lesions[-1], tracks.ids[-1]
    overl = links.scores.overlap >= m.min_overlap_fraction
    out = []
    for j, cl in enumerate(les):
        if cl.label in links.assign or not overl[:, j].any():
            continue
        cand = np.where(overl[:, j])[0]
        i = int(cand[np.argmax(links.scores.intersection_voxels[cand, j])])
        if i in links.linked_prev:
            out.append((cl.label, prev_ids[prev[i].label]))
    return out


def _merge_targets(
    tracks: _Tracks, les: list[Lesion], links: _Links, assign: dict[int, int], m: MatchingConfig
) -> list[tuple[int, int]]:
    """Step 5: (absorbed ID, coalesced ID) of unlinked previous lesions overlapping a linked one."""
    prev, prev_ids = tracks.lesions[-1], tracks.ids[-1]
    overl = links.scores.overlap >= m.min_overlap_fraction
    out = []
    for i, pl in enumerate(prev):
        if i in links.linked_prev or not overl[i, :].any():
            continue
        cand = np.where(overl[i, :])[0]
        j = int(cand[np.argmax(links.scores.intersection_voxels[i, cand])])
        if les[j].label in assign:
            out.append((prev_ids[pl.label], assign[les[j].label]))
    return out


@dataclass(frozen=True)
class _LookbackState:
    """What the look-back reads: tracks missed recently and where each was last seen.

    Attributes:
        lesion_ids: IDs absent from the previous study, not merged, last seen
            within ``lookback_studies`` studies before it, and not yet linked.
        last_seen: Lesion ID -> (study index, component) of its last appearance.
        labels: Per study, its component label map.
    """

    lesion_ids: tuple[int, ...]
    last_seen: Mapping[int, tuple[int, Lesion]]
    labels: Sequence[np.ndarray]

    @classmethod
    def of(cls, tracks: _Tracks, t: int, assign: dict[int, int], lookback: int) -> _LookbackState:
        """The candidates of study ``t`` given the links made so far."""
        present_prev = set(tracks.ids[-1].values())
        linked = set(assign.values())
        ids = tuple(
            lid
            for lid, (s, _) in tracks.last_seen.items()
            if lid not in present_prev
            and lid not in tracks.merged_into
            and t - 1 - lookback <= s <= t - 2
            and lid not in linked
        )
        return cls(ids, tracks.last_seen, tracks.labels)


def _lookback(
    state: _LookbackState, cur: list[Lesion], lab: np.ndarray, m: MatchingConfig
) -> dict[int, int]:
    """Step 6: link still-open current lesions to recently missed tracks.

    Args:
        state: The candidates.
        cur: The current study's lesions not linked yet.
        lab: The current study's component label map.
        m: Matching settings (the same cost and assignment as step 3).

    Returns:
        Component label -> the reappearing lesion ID, in link order.
    """
    cost = np.zeros((len(state.lesion_ids), len(cur)))
    ok = np.zeros((len(state.lesion_ids), len(cur)), dtype=bool)
    for r, lid in enumerate(state.lesion_ids):
        s, old = state.last_seen[lid]
        sc = pair_scores(state.labels[s], [old], lab, cur)
        c, a = link_cost(
            sc,
            max_distance_mm=m.max_distance_mm,
            distance_weight=m.distance_weight,
            min_overlap_fraction=m.min_overlap_fraction,
        )
        cost[r], ok[r] = c[0], a[0]
    links = optimal_links(cost, ok, unlinked_cost=0.5 * (1.0 + m.distance_weight))
    return {cur[k].label: state.lesion_ids[r] for r, k in links}


def _link_study(
    tracks: _Tracks, t: int, lab: np.ndarray, les: list[Lesion], m: MatchingConfig
) -> dict[int, int]:
    """Steps 3-7 for study ``t > 0``: every component's lesion ID; events recorded in ``tracks``."""
    links = _link_previous(tracks, lab, les, m)
    assign = dict(links.assign)
    fragments: dict[int, list[int]] = {}
    for comp, parent in _split_parents(tracks, les, links, m):
        fid = tracks.new_id()
        assign[comp] = fid
        tracks.split_from[fid] = parent
        fragments.setdefault(parent, []).append(fid)
    for parent, frags in fragments.items():
        cont = (parent,) if parent in assign.values() else ()
        tracks.events.append(TrackEvent("split", t, (parent,), cont + tuple(frags)))
    absorbed: dict[int, list[int]] = {}
    for src, target in _merge_targets(tracks, les, links, assign, m):
        tracks.merged_into[src] = (t, target)
        absorbed.setdefault(target, []).append(src)
    for target, srcs in absorbed.items():
        tracks.events.append(TrackEvent("merge", t, (target, *srcs), (target,)))
    if m.lookback_studies > 0:
        state = _LookbackState.of(tracks, t, assign, m.lookback_studies)
        open_les = [cl for cl in les if cl.label not in assign]
        if state.lesion_ids and open_les:
            for comp, lid in _lookback(state, open_les, lab, m).items():
                assign[comp] = lid
                tracks.reappeared.add((t, lid))
                tracks.events.append(TrackEvent("reappear", t, (lid,), (lid,)))
    return assign


def track_patient(
    masks: Sequence[Volume],
    days_from_baseline: Sequence[float],
    *,
    config: TrackConfig | None = None,
    patient_id: str = "patient",
    study_ids: Sequence[str] | None = None,
    baseline_to_study: Sequence[np.ndarray | None] | None = None,
    baseline_grid: Volume | Grid | None = None,
) -> TrackingResult:
    """Give every lesion of a patient a persistent ID across studies.

    The steps of the module docstring, one function each: masks on one grid
    (:func:`to_common_grid`), lesions measured, one-to-one links to the previous
    study, splits, merges, look-back, new IDs for the rest.

    Args:
        masks: One lesion mask per study in time order, (X, Y, Z), non-zero =
            lesion; on one co-registered grid, or on native grids together with
            ``baseline_to_study``.
        days_from_baseline: Days of each study from the first (non-decreasing).
        config: Tracking settings (defaults: :class:`TrackConfig`).
        patient_id: Written into the tables.
        study_ids: StudyIDs (default ``"S0"``, ``"S1"``...).
        baseline_to_study: Optional per-study 4x4 transforms (see
            :func:`to_common_grid`); masks are then mapped to the baseline grid
            with nearest-neighbour resampling first.
        baseline_grid: Grid to track on (default: the first mask's grid), e.g.
            the preprocessed baseline grid of the patient.

    Returns:
        A :class:`TrackingResult` with tracked maps (baseline grid), events, the
        trajectory table and the per-study burden table.

    Raises:
        GeometryMismatchError: Masks are not on one grid and no transforms were given.
        ValueError: Lengths differ or days decrease.
    """
    cfg = config or TrackConfig()
    n = len(masks)
    days, sids = _check_inputs(n, days_from_baseline, study_ids)
    common = to_common_grid(
        masks,
        baseline_to_study=baseline_to_study,
        atol_mm=cfg.grid_atol_mm,
        baseline_grid=baseline_grid,
    )
    tracks = _Tracks()
    for t, mask in enumerate(common):
        lab, les = _measure(mask, cfg)
        assign = _link_study(tracks, t, lab, les, cfg.matching) if t > 0 and les else {}
        for cl in les:  # step 7: anything left is a new lesion
            if cl.label not in assign:
                assign[cl.label] = tracks.new_id()
        tracks.add_study(t, lab, les, assign)

    tracked_maps, study_lesions = _relabel(common, tracks.labels, tracks.lesions, tracks.ids)
    result = TrackingResult(
        patient_id=patient_id,
        study_ids=sids,
        days_from_baseline=tuple(days),
        tracked_maps=tuple(tracked_maps),
        study_lesions=tuple(study_lesions),
        events=tuple(tracks.events),
        split_from=tracks.split_from,
        merged_into=tracks.merged_into,
        reappeared=frozenset(tracks.reappeared),
    )
    log.info(
        "patient %s: %d studies, %d lesion IDs, %d events",
        patient_id,
        n,
        result.n_lesions,
        len(tracks.events),
    )
    return replace(
        result,
        trajectories=build_trajectories(result, status=cfg.status),
        burden=build_burden(result),
    )


def _relabel(
    common: list[Volume],
    labels: list[np.ndarray],
    lesions: list[list[Lesion]],
    ids: list[dict[int, int]],
) -> tuple[list[Volume], list[StudyLesions]]:
    maps: list[Volume] = []
    out: list[StudyLesions] = []
    for t, (vol, lab, les, assign) in enumerate(zip(common, labels, lesions, ids, strict=True)):
        lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, dtype=np.int32)
        for comp, lid in assign.items():
            lut[comp] = lid
        tracked = lut[lab].astype(np.int32)
        maps.append(Volume(array=tracked, affine=np.array(vol.affine, copy=True)))
        relab = tuple(
            sorted(
                (
                    Lesion(
                        label=assign[x.label],
                        voxel_count=x.voxel_count,
                        volume_mm3=x.volume_mm3,
                        centroid_mm=x.centroid_mm,
                        centroid_voxel=x.centroid_voxel,
                        longest_diameter_mm=x.longest_diameter_mm,
                        bbox=x.bbox,
                    )
                    for x in les
                ),
                key=lambda x: x.label,
            )
        )
        out.append(StudyLesions(t, relab))
    return maps, out
