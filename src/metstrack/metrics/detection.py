"""Lesion-wise detection and segmentation metrics from a :class:`LesionMatching`.

Definitions (``TP`` counts detected *reference* lesions, ``TP_pred`` matched
*predicted* lesions; they differ only in ``brats`` mode, where one reference
lesion may take several predictions):

- sensitivity = TP / (TP + FN); NaN without reference lesions.
- precision = TP_pred / (TP_pred + FP); NaN without predicted lesions.
- F1 = 2 TP / (2 TP + FP + FN); NaN when both are empty.
- F-beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP) (b = 2 weighs misses 4x).
- false positives per scan = FP (per study; the cohort mean is FP per scan).
- lesion Dice / HD95 of a reference lesion: Dice and HD95 between the lesion and
  the union of its matched predictions; ``lesion_dice`` and ``lesion_hd95_mm``
  average them over detected lesions (NaN when none).
- penalised lesion-wise scores (BraTS): ``lesionwise_dice`` = (sum of Dice over
  reference lesions, 0 for missed ones) / (reference lesions + FP);
  ``lesionwise_hd95_mm`` likewise with ``hd95_penalty_mm`` (374 mm) for every
  missed and false lesion. NaN when the study has neither (the official BraTS
  script writes 1 and 0 there; metstrack keeps one NaN policy).
- count error = predicted components - reference components (signed), its
  absolute value, and relative error = signed / reference count (NaN when the
  reference is empty); the same for total volume in mm3.

Every metric is also stratified by reference lesion volume (default bins
[0, 10), [10, 100), [100, 1000), [1000, inf) mm3). 10 mm3 is always a bin edge,
so the < 10 mm3 stratum is always reported (NaN with ``n_ref = 0`` when the
study has no such lesion). False positives are binned by their own volume.
Reference lesions ignored by ``min_ref_volume_mm3`` are listed with kind
``"ignored"`` and count nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from metstrack.core.lesions import LabelMap
from metstrack.metrics.matching import LesionMatching
from metstrack.metrics.voxel import grouped_hd95

#: Default reference-volume strata (mm3): [0, 10), [10, 100), [100, 1000), [1000, inf).
DEFAULT_VOLUME_BINS_MM3: tuple[float, ...] = (0.0, 10.0, 100.0, 1000.0, math.inf)
#: The small-lesion boundary that is always a stratum edge.
SMALL_LESION_MM3 = 10.0
#: HD95 given to missed and false lesions by the BraTS-METS convention (mm).
BRATS_HD95_PENALTY_MM = 374.0
#: Kinds of rows in the lesion table.
LESION_KINDS: tuple[str, ...] = ("tp", "fn", "fp", "ignored")


def normalize_bins(edges: Sequence[float]) -> tuple[float, ...]:
    """Validate volume bin edges (mm3) and make 10 mm3 an edge.

    Args:
        edges: Increasing edges starting at 0; the last may be ``inf``.

    Returns:
        The edges with 10 inserted when missing and ``inf`` appended when the last is finite.
    """
    e = [float(x) for x in edges]
    if len(e) < 2 or e[0] != 0.0 or any(b <= a for a, b in zip(e, e[1:], strict=False)):
        raise ValueError(f"volume bin edges must increase from 0, got {list(edges)}")
    if SMALL_LESION_MM3 not in e:
        e = sorted([*e, SMALL_LESION_MM3])
    if not math.isinf(e[-1]):
        e.append(math.inf)
    return tuple(e)


def bin_label(lo: float, hi: float) -> str:
    """Stratum name such as ``"[0,10)"`` or ``"[1000,inf)"``."""

    def f(x: float) -> str:
        return "inf" if math.isinf(x) else f"{x:g}"

    return f"[{f(lo)},{f(hi)})"


def _bin_of(volume_mm3: float, edges: Sequence[float]) -> int:
    return int(np.searchsorted(np.asarray(edges[1:]), volume_mm3, side="right"))


@dataclass(frozen=True)
class LesionRecord:
    """One row of the per-lesion table: a reference lesion or a false positive.

    Attributes:
        kind: ``"tp"``, ``"fn"``, ``"fp"`` or ``"ignored"`` (below the minimum volume).
        ref_labels: Reference component labels of the lesion (empty for ``fp``).
        pred_labels: Matched predicted labels (the lesion itself for ``fp``).
        ref_volume_mm3: Reference lesion volume (NaN for ``fp``).
        pred_volume_mm3: Volume of the matched predictions (0 for ``fn``).
        intersection_mm3: Volume shared by the lesion and its matched predictions.
        dice: Lesion Dice (0 for ``fn`` and ``fp``).
        hd95_mm: Lesion HD95 (NaN for ``fn`` and ``fp``: undefined; penalties apply
            only in the penalised scores).
        match_score: IoU or IoR of the match (``overlap`` mode; NaN otherwise).
        stratum: Volume stratum: of the reference lesion, or of the prediction for ``fp``.
        centroid_mm: World centroid (RAS, mm) of the reference lesion (of the
            prediction for ``fp``).
        is_new: The reference lesion has no counterpart in the previous study
            (``None`` when unknown or for ``fp``).
    """

    kind: str
    ref_labels: tuple[int, ...]
    pred_labels: tuple[int, ...]
    ref_volume_mm3: float
    pred_volume_mm3: float
    intersection_mm3: float
    dice: float
    hd95_mm: float
    match_score: float
    stratum: str
    centroid_mm: tuple[float, float, float]
    is_new: bool | None = None


@dataclass(frozen=True)
class StratumMetrics:
    """Detection within one reference-volume stratum.

    Attributes:
        stratum: Name such as ``"[0,10)"``.
        lower_mm3: Inclusive lower edge.
        upper_mm3: Exclusive upper edge.
        n_ref: Reference lesions in the stratum (ignored ones excluded).
        tp: Detected reference lesions.
        fn: Missed reference lesions.
        sensitivity: tp / n_ref; NaN when ``n_ref == 0``.
        fp: False positives whose own volume falls in the stratum.
        dice_mean: Mean lesion Dice over the stratum's reference lesions (0 for
            missed ones); NaN when ``n_ref == 0``.
    """

    stratum: str
    lower_mm3: float
    upper_mm3: float
    n_ref: int
    tp: int
    fn: int
    sensitivity: float
    fp: int
    dice_mean: float


@dataclass(frozen=True)
class DetectionMetrics:
    """Lesion-wise detection and segmentation quality of one study.

    Attributes:
        n_ref: Reference lesions scored (after merging in ``brats`` mode, ignored excluded).
        n_ref_ignored: Reference lesions at or below the minimum volume.
        n_pred: Predicted components.
        tp: Detected reference lesions.
        tp_pred: Predicted lesions matched to a reference lesion.
        fp: Predicted lesions matched to none.
        fn: Missed reference lesions.
        sensitivity: tp / (tp + fn); NaN when there is no reference lesion.
        precision: tp_pred / (tp_pred + fp); NaN when there is no prediction.
        f1: 2 tp / (2 tp + fp + fn); NaN when both are empty.
        beta: The beta of ``f_beta``.
        f_beta: (1 + beta^2) tp / ((1 + beta^2) tp + beta^2 fn + fp); NaN when both empty.
        lesion_dice: Mean Dice over detected reference lesions (NaN if none).
        lesion_hd95_mm: Mean HD95 over detected reference lesions (NaN if none).
        lesionwise_dice: Penalised BraTS-style lesion-wise Dice (NaN if no lesion at all).
        lesionwise_hd95_mm: Penalised BraTS-style lesion-wise HD95 (NaN if no lesion at all).
        hd95_penalty_mm: HD95 assigned to missed and false lesions in the penalised score.
        ref_count: Reference connected components (before any merging or ignoring).
        pred_count: Predicted connected components.
        count_error: pred_count - ref_count.
        count_abs_error: |count_error|.
        count_rel_error: count_error / ref_count (NaN when ref_count is 0).
        ref_volume_mm3: Total reference volume.
        pred_volume_mm3: Total predicted volume.
        volume_error_mm3: pred - ref total volume.
        volume_abs_error_mm3: |volume_error_mm3|.
        volume_rel_error: volume_error_mm3 / ref_volume_mm3 (NaN when the reference is empty).
        n_new_ref: Reference lesions new since the previous study (0 when unknown).
        new_detected: New reference lesions that were detected.
        new_lesion_sensitivity: new_detected / n_new_ref (NaN when none or unknown).
    """

    n_ref: int
    n_ref_ignored: int
    n_pred: int
    tp: int
    tp_pred: int
    fp: int
    fn: int
    sensitivity: float
    precision: float
    f1: float
    beta: float
    f_beta: float
    lesion_dice: float
    lesion_hd95_mm: float
    lesionwise_dice: float
    lesionwise_hd95_mm: float
    hd95_penalty_mm: float
    ref_count: int
    pred_count: int
    count_error: int
    count_abs_error: int
    count_rel_error: float
    ref_volume_mm3: float
    pred_volume_mm3: float
    volume_error_mm3: float
    volume_abs_error_mm3: float
    volume_rel_error: float
    n_new_ref: int
    new_detected: int
    new_lesion_sensitivity: float


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def component_surfaces(lm: LabelMap) -> list[np.ndarray]:
    """Surface voxel indices of every component, each extracted on its own crop.

    The surface of a union of components is the union of their surfaces (a
    face-neighbour inside the mask always belongs to the same component), so
    these serve every lesion-wise and whole-mask distance without a full-volume pass.

    Returns:
        A list indexed by label (index 0 empty) of int64 (N, 3) voxel indices.
    """
    out: list[np.ndarray] = [np.zeros((0, 3), np.int64)]
    for lab in range(1, lm.n + 1):
        if lm.voxel_counts[lab] == 0:
            out.append(np.zeros((0, 3), np.int64))
            continue
        box = lm.box(lab)
        crop = lm.labels[box] == lab
        if lm.voxel_counts[lab] <= 2:
            edges = crop  # every voxel of a 1- or 2-voxel lesion is on its surface
        else:
            edges = crop & ~ndimage.binary_erosion(crop, border_value=0)
        out.append(np.argwhere(edges).astype(np.int64) + np.array([s.start for s in box]))
    return out


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)


def _unit_hd95(
    matching: LesionMatching,
    psurf: list[np.ndarray],
    rsurf: list[np.ndarray],
    spacing_mm: Sequence[float],
) -> np.ndarray:
    """HD95 of every matched reference lesion with the union of its predictions (NaN otherwise).

    All pairs in one batched, exact computation (:func:`~metstrack.metrics.voxel.grouped_hd95`):
    the surfaces are those of the components, so each pair's distances stay inside its
    own lesions and the cost does not grow with the number of lesions.
    """
    n_units = len(matching.ref_units)
    pp, pg, rp, rg = [], [], [], []
    for u, (comps, ps) in enumerate(zip(matching.ref_units, matching.unit_pred, strict=True)):
        if not ps or matching.unit_ignored[u]:
            continue
        for p in ps:
            pp.append(psurf[p])
            pg.append(np.full(len(psurf[p]), u, np.int64))
        for r in comps:
            rp.append(rsurf[r])
            rg.append(np.full(len(rsurf[r]), u, np.int64))
    if not pp:
        return np.full(n_units, np.nan)
    return grouped_hd95(
        _stack(pp), np.concatenate(pg), _stack(rp), np.concatenate(rg), n_units,
        spacing_mm=spacing_mm,
    )  # fmt: skip


def compute_detection(
    pred: LabelMap,
    ref: LabelMap,
    matching: LesionMatching,
    *,
    spacing_mm: Sequence[float],
    affine: np.ndarray,
    voxel_volume_mm3: float,
    volume_bins_mm3: Sequence[float] = DEFAULT_VOLUME_BINS_MM3,
    beta: float = 2.0,
    hd95_penalty_mm: float = BRATS_HD95_PENALTY_MM,
    pred_surfaces: list[np.ndarray] | None = None,
    ref_surfaces: list[np.ndarray] | None = None,
    unit_is_new: Sequence[bool | None] | None = None,
) -> tuple[DetectionMetrics, tuple[StratumMetrics, ...], tuple[LesionRecord, ...]]:
    """Detection metrics, strata and the per-lesion table of one study.

    Args:
        pred: Labelled prediction.
        ref: Labelled reference on the same grid.
        matching: The result of :func:`metstrack.metrics.matching.match_lesions`.
        spacing_mm: Voxel spacing along X, Y, Z in mm.
        affine: (4, 4) voxel-to-world matrix for centroids in mm.
        voxel_volume_mm3: Volume of one voxel.
        volume_bins_mm3: Stratum edges (see :func:`normalize_bins`).
        beta: Beta of the F-beta score.
        hd95_penalty_mm: HD95 of missed and false lesions in the penalised score.
        pred_surfaces: Cached :func:`component_surfaces` of ``pred``.
        ref_surfaces: Cached :func:`component_surfaces` of ``ref``.
        unit_is_new: Per reference lesion of ``matching``: new since the previous
            study (``None`` unknown).

    Returns:
        ``(metrics, strata, lesions)``.
    """
    edges = normalize_bins(volume_bins_mm3)
    psurf = component_surfaces(pred) if pred_surfaces is None else pred_surfaces
    rsurf = component_surfaces(ref) if ref_surfaces is None else ref_surfaces
    unit_hd = _unit_hd95(matching, psurf, rsurf, spacing_mm)
    geo = _Geometry(np.asarray(affine, dtype=np.float64), float(voxel_volume_mm3), edges)
    tally = _Tally.empty(len(edges) - 1)
    records = [
        _reference_record(u, pred, ref, matching, unit_hd, unit_is_new, geo, tally)
        for u in range(len(matching.ref_units))
    ]
    records += [_false_positive_record(p, pred, geo, tally) for p in matching.false_positive_pred]
    metrics = _detection_totals(pred, ref, matching, tally, geo, beta, hd95_penalty_mm)
    return metrics, _strata(tally, edges), tuple(records)


@dataclass(frozen=True)
class _Geometry:
    """What turns voxel counts and centroids into mm: the affine, voxel volume, strata edges."""

    affine: np.ndarray
    voxel_volume_mm3: float
    edges: tuple[float, ...]

    def centroid_mm(self, c_vox: np.ndarray) -> tuple[float, float, float]:
        c = self.affine[:3, :3] @ c_vox + self.affine[:3, 3]
        return (float(c[0]), float(c[1]), float(c[2]))

    def stratum(self, volume_mm3: float) -> tuple[int, str]:
        b = _bin_of(volume_mm3, self.edges)
        return b, bin_label(self.edges[b], self.edges[b + 1])


@dataclass
class _Tally:
    """Running counts of one study's detection (per stratum and in total)."""

    b_nref: np.ndarray
    b_tp: np.ndarray
    b_fp: np.ndarray
    b_dice: np.ndarray
    tp: int = 0
    fn: int = 0
    n_ignored: int = 0
    n_new: int = 0
    new_detected: int = 0
    dice_sum_scored: float = 0.0
    dices_tp: list[float] = field(default_factory=list)
    hds_tp: list[float] = field(default_factory=list)

    @classmethod
    def empty(cls, n_bins: int) -> _Tally:
        return cls(
            np.zeros(n_bins, int), np.zeros(n_bins, int), np.zeros(n_bins, int), np.zeros(n_bins)
        )


def _reference_record(
    u: int,
    pred: LabelMap,
    ref: LabelMap,
    matching: LesionMatching,
    unit_hd: np.ndarray,
    unit_is_new: Sequence[bool | None] | None,
    geo: _Geometry,
    tally: _Tally,
) -> LesionRecord:
    """The record of reference lesion ``u`` (tp, fn or ignored), counted into ``tally``."""
    comps = matching.ref_units[u]
    ps = matching.unit_pred[u]
    n_r = int(ref.voxel_counts[list(comps)].sum())
    n_p = int(pred.voxel_counts[list(ps)].sum()) if ps else 0
    inter = int(matching.unit_intersection_voxels[u])
    w = ref.voxel_counts[list(comps)].astype(np.float64)
    c_vox = (ref.centroids_voxel[list(comps)] * w[:, None]).sum(axis=0) / w.sum()
    vol = n_r * geo.voxel_volume_mm3
    b, stratum = geo.stratum(vol)
    is_new = None if unit_is_new is None else unit_is_new[u]
    if matching.unit_ignored[u]:
        kind, dice, hd = "ignored", math.nan, math.nan
        tally.n_ignored += 1
    elif ps:
        kind = "tp"
        dice = 2.0 * inter / (n_p + n_r)
        hd = float(unit_hd[u])
        tally.tp += 1
        tally.dices_tp.append(dice)
        tally.hds_tp.append(hd)
    else:
        kind, dice, hd = "fn", 0.0, math.nan
        tally.fn += 1
    if kind != "ignored":
        tally.b_nref[b] += 1
        tally.b_tp[b] += kind == "tp"
        tally.b_dice[b] += dice
        tally.dice_sum_scored += dice
        if is_new:
            tally.n_new += 1
            tally.new_detected += kind == "tp"
    return LesionRecord(
        kind=kind,
        ref_labels=tuple(int(r) for r in comps),
        pred_labels=tuple(int(p) for p in ps),
        ref_volume_mm3=vol,
        pred_volume_mm3=n_p * geo.voxel_volume_mm3,
        intersection_mm3=inter * geo.voxel_volume_mm3,
        dice=dice,
        hd95_mm=hd,
        match_score=float(matching.unit_score[u]),
        stratum=stratum,
        centroid_mm=geo.centroid_mm(c_vox),
        is_new=is_new,
    )


def _false_positive_record(p: int, pred: LabelMap, geo: _Geometry, tally: _Tally) -> LesionRecord:
    """The record of unmatched predicted component ``p``, counted into ``tally``."""
    vol = float(pred.voxel_counts[p]) * geo.voxel_volume_mm3
    b, stratum = geo.stratum(vol)
    tally.b_fp[b] += 1
    return LesionRecord(
        kind="fp",
        ref_labels=(),
        pred_labels=(int(p),),
        ref_volume_mm3=math.nan,
        pred_volume_mm3=vol,
        intersection_mm3=0.0,
        dice=0.0,
        hd95_mm=math.nan,
        match_score=math.nan,
        stratum=stratum,
        centroid_mm=geo.centroid_mm(pred.centroids_voxel[p]),
        is_new=None,
    )


def _detection_totals(
    pred: LabelMap,
    ref: LabelMap,
    matching: LesionMatching,
    tally: _Tally,
    geo: _Geometry,
    beta: float,
    hd95_penalty_mm: float,
) -> DetectionMetrics:
    """The study's :class:`DetectionMetrics` from the tally and the two label maps."""
    tp, fn = tally.tp, tally.fn
    fp = len(matching.false_positive_pred)
    tp_pred = len(matching.matched_pred)
    n_scored = tp + fn
    b2 = beta * beta
    vv = geo.voxel_volume_mm3
    ref_count = int(np.count_nonzero(ref.voxel_counts[1:]))
    pred_count = int(np.count_nonzero(pred.voxel_counts[1:]))
    ref_vol = float(ref.voxel_counts[1:].sum()) * vv
    pred_vol = float(pred.voxel_counts[1:].sum()) * vv
    return DetectionMetrics(
        n_ref=n_scored,
        n_ref_ignored=tally.n_ignored,
        n_pred=pred_count,
        tp=tp,
        tp_pred=tp_pred,
        fp=fp,
        fn=fn,
        sensitivity=_ratio(tp, tp + fn),
        precision=_ratio(tp_pred, tp_pred + fp),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        beta=float(beta),
        f_beta=_ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp),
        lesion_dice=float(np.mean(tally.dices_tp)) if tally.dices_tp else math.nan,
        lesion_hd95_mm=float(np.mean(tally.hds_tp)) if tally.hds_tp else math.nan,
        lesionwise_dice=_ratio(tally.dice_sum_scored, n_scored + fp),
        lesionwise_hd95_mm=_ratio(sum(tally.hds_tp) + hd95_penalty_mm * (fn + fp), n_scored + fp),
        hd95_penalty_mm=float(hd95_penalty_mm),
        ref_count=ref_count,
        pred_count=pred_count,
        count_error=pred_count - ref_count,
        count_abs_error=abs(pred_count - ref_count),
        count_rel_error=_ratio(pred_count - ref_count, ref_count),
        ref_volume_mm3=ref_vol,
        pred_volume_mm3=pred_vol,
        volume_error_mm3=pred_vol - ref_vol,
        volume_abs_error_mm3=abs(pred_vol - ref_vol),
        volume_rel_error=_ratio(pred_vol - ref_vol, ref_vol),
        n_new_ref=tally.n_new,
        new_detected=tally.new_detected,
        new_lesion_sensitivity=_ratio(tally.new_detected, tally.n_new),
    )


def _strata(tally: _Tally, edges: Sequence[float]) -> tuple[StratumMetrics, ...]:
    """Per-stratum detection of the reference lesions (and false positives by their volume)."""
    return tuple(
        StratumMetrics(
            stratum=bin_label(edges[i], edges[i + 1]),
            lower_mm3=edges[i],
            upper_mm3=edges[i + 1],
            n_ref=int(tally.b_nref[i]),
            tp=int(tally.b_tp[i]),
            fn=int(tally.b_nref[i] - tally.b_tp[i]),
            sensitivity=_ratio(tally.b_tp[i], tally.b_nref[i]),
            fp=int(tally.b_fp[i]),
            dice_mean=_ratio(tally.b_dice[i], tally.b_nref[i]),
        )
        for i in range(len(edges) - 1)
    )
