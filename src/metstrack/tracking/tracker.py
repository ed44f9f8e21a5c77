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
from collections.abc import Sequence

import numpy as np

from metstrack.core.grid import Grid
from metstrack.core.lesions import label_components, lesion_table
from metstrack.core.mapping import map_to_baseline
from metstrack.errors import GeometryMismatchError
from metstrack.tracking.config import TrackConfig
from metstrack.tracking.match import link_cost, optimal_links, pair_scores
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
    days = [float(d) for d in days_from_baseline]
    if len(days) != n:
        raise ValueError(f"{n} masks but {len(days)} days_from_baseline")
    if any(b < a for a, b in zip(days, days[1:], strict=False)):
        raise ValueError(f"days_from_baseline must be in time order, got {days}")
    sids = tuple(study_ids) if study_ids is not None else tuple(f"S{i}" for i in range(n))
    if len(sids) != n:
        raise ValueError(f"{n} masks but {len(sids)} study_ids")
    common = to_common_grid(
        masks,
        baseline_to_study=baseline_to_study,
        atol_mm=cfg.grid_atol_mm,
        baseline_grid=baseline_grid,
    )
    m = cfg.matching

    labels: list[np.ndarray] = []
    lesions: list[list[Lesion]] = []
    ids: list[dict[int, int]] = []  # per study: component label -> lesion ID
    last_seen: dict[int, tuple[int, Lesion]] = {}  # ID -> (study, lesion with component label)
    split_from: dict[int, int] = {}
    merged_into: dict[int, tuple[int, int]] = {}
    reappeared: set[tuple[int, int]] = set()
    events: list[TrackEvent] = []
    next_id = 1

    for t, mask in enumerate(common):
        lab, les = _measure(mask, cfg)
        assign: dict[int, int] = {}
        if t > 0 and les:
            prev, prev_lab, prev_ids = lesions[t - 1], labels[t - 1], ids[t - 1]
            scores = pair_scores(prev_lab, prev, lab, les)
            cost, ok = link_cost(
                scores,
                max_distance_mm=m.max_distance_mm,
                distance_weight=m.distance_weight,
                min_overlap_fraction=m.min_overlap_fraction,
            )
            links = optimal_links(cost, ok, unlinked_cost=0.5 * (1.0 + m.distance_weight))
            linked_prev = {i for i, _ in links}
            for i, j in links:
                assign[les[j].label] = prev_ids[prev[i].label]
            overl = scores.overlap >= m.min_overlap_fraction
            # splits: unlinked current lesions overlapping a linked previous lesion
            fragments: dict[int, list[int]] = {}
            for j, cl in enumerate(les):
                if cl.label in assign or not overl[:, j].any():
                    continue
                cand = np.where(overl[:, j])[0]
                i = int(cand[np.argmax(scores.intersection_voxels[cand, j])])
                if i not in linked_prev:
                    continue
                parent = prev_ids[prev[i].label]
                assign[cl.label] = next_id
                split_from[next_id] = parent
                fragments.setdefault(parent, []).append(next_id)
                next_id += 1
            for parent, frags in fragments.items():
                cont = (parent,) if parent in assign.values() else ()
                events.append(TrackEvent("split", t, (parent,), cont + tuple(frags)))
            # merges: unlinked previous lesions overlapping a linked current lesion
            absorbed: dict[int, list[int]] = {}
            for i, pl in enumerate(prev):
                if i in linked_prev or not overl[i, :].any():
                    continue
                cand = np.where(overl[i, :])[0]
                j = int(cand[np.argmax(scores.intersection_voxels[i, cand])])
                if les[j].label not in assign:
                    continue
                target = assign[les[j].label]
                src = prev_ids[pl.label]
                merged_into[src] = (t, target)
                absorbed.setdefault(target, []).append(src)
            for target, srcs in absorbed.items():
                events.append(TrackEvent("merge", t, (target, *srcs), (target,)))
            # look-back: lesions missed in the previous study(ies)
            if m.lookback_studies > 0:
                present_prev = set(prev_ids.values())
                cand_ids = [
                    lid
                    for lid, (s, _) in last_seen.items()
                    if lid not in present_prev
                    and lid not in merged_into
                    and t - 1 - m.lookback_studies <= s <= t - 2
                    and lid not in assign.values()
                ]
                open_j = [j for j, cl in enumerate(les) if cl.label not in assign]
                if cand_ids and open_j:
                    _lookback(
                        cand_ids,
                        open_j,
                        les,
                        lab,
                        labels,
                        last_seen,
                        assign,
                        cfg,
                        t,
                        reappeared,
                        events,
                    )
        for cl in les:
            if cl.label not in assign:
                assign[cl.label] = next_id
                next_id += 1
        for cl in les:
            last_seen[assign[cl.label]] = (t, cl)
        labels.append(lab)
        lesions.append(les)
        ids.append(assign)

    tracked_maps, study_lesions = _relabel(common, labels, lesions, ids)
    result = TrackingResult(
        patient_id=patient_id,
        study_ids=sids,
        days_from_baseline=tuple(days),
        tracked_maps=tuple(tracked_maps),
        study_lesions=tuple(study_lesions),
        events=tuple(events),
        split_from=split_from,
        merged_into=merged_into,
        reappeared=frozenset(reappeared),
    )
    traj = build_trajectories(result, status=cfg.status)
    burden = build_burden(result)
    log.info(
        "patient %s: %d studies, %d lesion IDs, %d events",
        patient_id,
        n,
        result.n_lesions,
        len(events),
    )
    return TrackingResult(**{**result.__dict__, "trajectories": traj, "burden": burden})


def _lookback(
    cand_ids: list[int],
    open_j: list[int],
    les: list[Lesion],
    lab: np.ndarray,
    labels: list[np.ndarray],
    last_seen: dict[int, tuple[int, Lesion]],
    assign: dict[int, int],
    cfg: TrackConfig,
    t: int,
    reappeared: set[tuple[int, int]],
    events: list[TrackEvent],
) -> None:
    """Link still-open current lesions to recently missed tracks (in place)."""
    m = cfg.matching
    cur = [les[j] for j in open_j]
    cost = np.zeros((len(cand_ids), len(cur)))
    ok = np.zeros((len(cand_ids), len(cur)), dtype=bool)
    for r, lid in enumerate(cand_ids):
        s, old = last_seen[lid]
        sc = pair_scores(labels[s], [old], lab, cur)
        c, a = link_cost(
            sc,
            max_distance_mm=m.max_distance_mm,
            distance_weight=m.distance_weight,
            min_overlap_fraction=m.min_overlap_fraction,
        )
        cost[r], ok[r] = c[0], a[0]
    for r, k in optimal_links(cost, ok, unlinked_cost=0.5 * (1.0 + m.distance_weight)):
        lid = cand_ids[r]
        assign[cur[k].label] = lid
        reappeared.add((t, lid))
        events.append(TrackEvent("reappear", t, (lid,), (lid,)))


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
