"""One entry point for a study: voxel, lesion-wise, stratified and new-lesion metrics.

:func:`evaluate_study` labels both masks once
(:func:`metstrack.metrics.foreground.label_foreground`: one connected-components
pass, then only the foreground voxels are touched), takes the pairwise
overlaps, each lesion's surface, counts, boxes and centroids from that one
pass, and derives everything from those: the whole-mask Dice/HD95/ASD/surface
Dice, the matching, the lesion-wise Dice/HD95 (all pairs in one exact batched
KD-tree query, :func:`metstrack.metrics.voxel.grouped_hd95`) and the strata.
The cost is the labelling plus work proportional to the lesions' size, flat in
the number of lesions (``benchmarks/metrics_speed.py``).

New lesions (for the longitudinal sensitivity): a reference lesion is *new*
when it has no counterpart in the previous study's reference. With instance
maps carrying ground-truth identities (``ref_instances`` and
``previous_ref_instances``, same IDs for the same lesion over time), the
counterpart is the same ID: a lesion is new when none of the IDs under its
voxels occurs in the previous study. Otherwise the counterpart is found by
overlap on a common grid: a lesion is new when none of its voxels overlaps the
previous reference (dilated by ``new_lesion_margin_voxels``). The previous
reference must then be on the study's grid (register and resample it first,
e.g. with ``metstrack.core.spatial.resample_array``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from metstrack.core.affine import affine_from_spacing, spacing_from_affine
from metstrack.core.lesions import LabelMap
from metstrack.errors import GeometryMismatchError, LabelError
from metstrack.metrics.detection import (
    BRATS_HD95_PENALTY_MM,
    DEFAULT_VOLUME_BINS_MM3,
    DetectionMetrics,
    LesionRecord,
    StratumMetrics,
    _stack,
    compute_detection,
)
from metstrack.metrics.foreground import foreground_overlaps, label_foreground
from metstrack.metrics.matching import (
    BRATS_METS_DILATION_VOXELS,
    Criterion,
    LesionMatching,
    MatchingOptions,
    MatchMode,
    Objective,
    match_lesions,
)
from metstrack.metrics.voxel import VoxelMetrics, voxel_metrics_from_parts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyEvaluation:
    """Every metric of one study.

    Attributes:
        patient_id: Patient identifier (may be empty).
        study_id: Study identifier (may be empty).
        mode: Matching mode (``"overlap"`` or ``"brats"``).
        prediction_missing: No prediction existed; it was evaluated as empty (all missed).
        has_previous: New-lesion status was determined (a previous study was given).
        voxel: Whole-mask metrics.
        detection: Lesion-wise metrics.
        strata: Per reference-volume stratum, in increasing volume order.
        lesions: Per-lesion rows (reference lesions first, then false positives).
    """

    patient_id: str
    study_id: str
    mode: str
    prediction_missing: bool
    has_previous: bool
    voxel: VoxelMetrics
    detection: DetectionMetrics
    strata: tuple[StratumMetrics, ...]
    lesions: tuple[LesionRecord, ...]

    def stratum(self, name: str) -> StratumMetrics:
        """The stratum called ``name`` (e.g. ``"[0,10)"``)."""
        for s in self.strata:
            if s.stratum == name:
                return s
        raise KeyError(f"no stratum {name!r}; have {[s.stratum for s in self.strata]}")

    def row(self) -> dict[str, object]:
        """Flat mapping of every scalar metric, for one row of the per-study table."""
        out: dict[str, object] = {
            "patient_id": self.patient_id,
            "study_id": self.study_id,
            "mode": self.mode,
            "prediction_missing": self.prediction_missing,
        }
        out.update({f"voxel_{k}": v for k, v in asdict(self.voxel).items()})
        out.update(asdict(self.detection))
        for s in self.strata:
            for f in ("n_ref", "tp", "fn", "sensitivity", "fp", "dice_mean"):
                out[f"{s.stratum}_{f}"] = getattr(s, f)
        return out

    def lesion_rows(self) -> list[dict[str, object]]:
        """One mapping per lesion, for the per-lesion table."""
        rows = []
        for i, r in enumerate(self.lesions):
            d: dict[str, object] = {
                "patient_id": self.patient_id,
                "study_id": self.study_id,
                "lesion_index": i,
            }
            for f in fields(r):
                v = getattr(r, f.name)
                if f.name in ("ref_labels", "pred_labels"):
                    v = " ".join(str(x) for x in v)
                if f.name == "centroid_mm":
                    d["centroid_x_mm"], d["centroid_y_mm"], d["centroid_z_mm"] = v
                    continue
                d[f.name] = v
            rows.append(d)
        return rows


def _as_mask(arr: np.ndarray, what: str, *, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise LabelError(f"{name}: expected a 3D (X, Y, Z) {what}, found shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise LabelError(f"{name}: {what} holds NaN or infinite values")
        frac = arr != np.round(arr)
        if frac.any():
            raise LabelError(
                f"{name}: {what} holds non-integer values "
                f"(range {arr.min():.3g}..{arr.max():.3g}); "
                "is it a probability map? threshold it first (metstrack evaluate --threshold 0.5)"
            )
    if (arr < 0).any():
        raise LabelError(f"{name}: {what} holds negative values")
    return arr != 0


def resolve_geometry(
    shape: tuple[int, ...],
    spacing_mm: Sequence[float] | None,
    affine: np.ndarray | None,
) -> tuple[tuple[float, float, float], np.ndarray, float]:
    """Spacing, affine and voxel volume from whichever of spacing and affine is given.

    With the spacing alone the affine is the diagonal one of
    :func:`metstrack.core.affine.affine_from_spacing`: the metrics depend only on
    the spacing, so it changes none of them (world positions are then relative
    to voxel (0, 0, 0)).
    """
    if affine is not None:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {aff.shape}")
        sp = spacing_from_affine(aff)
        if spacing_mm is not None and not np.allclose(sp, spacing_mm, atol=1e-4):
            raise ValueError(f"spacing_mm {tuple(spacing_mm)} disagrees with the affine's {sp}")
        return sp, aff, float(abs(np.linalg.det(aff[:3, :3])))
    if spacing_mm is None:
        raise ValueError(
            "evaluate_study needs spacing_mm or affine: volumes and distances are in mm"
        )
    aff = affine_from_spacing(spacing_mm)
    sp_arr = np.diag(aff)[:3]
    return (float(sp_arr[0]), float(sp_arr[1]), float(sp_arr[2])), aff, float(np.prod(sp_arr))


def new_lesion_flags(
    ref: LabelMap,
    matching: LesionMatching,
    *,
    previous_ref: np.ndarray | None = None,
    ref_instances: np.ndarray | None = None,
    previous_ref_instances: np.ndarray | None = None,
    margin_voxels: int = 0,
) -> tuple[bool | None, ...]:
    """Whether each reference lesion of ``matching`` is new since the previous study.

    Args:
        ref: Labelled reference of this study.
        matching: Matching whose ``ref_units`` define the reference lesions.
        previous_ref: (X, Y, Z) previous reference mask on this study's grid.
        ref_instances: (X, Y, Z) int instance map of this study (ground-truth identities).
        previous_ref_instances: (X, Y, Z) int instance map of the previous study.
        margin_voxels: Dilation (18-connected, iterations) of the previous
            reference before testing overlap; identities ignore it.

    Returns:
        One flag per reference lesion; all ``None`` when no previous study is given.
    """
    n_units = len(matching.ref_units)
    if ref_instances is not None and previous_ref_instances is not None:
        cur = np.asarray(ref_instances)
        prev_ids = set(np.unique(np.asarray(previous_ref_instances)).tolist()) - {0}
        lab = ref.labels
        out: list[bool | None] = []
        for comps in matching.ref_units:
            ids: set[int] = set()
            for r in comps:
                box = ref.box(r)
                ids |= set(np.unique(cur[box][lab[box] == r]).tolist()) - {0}
            out.append(not (ids & prev_ids))
        return tuple(out)
    if previous_ref is None:
        return tuple(None for _ in range(n_units))
    prev = np.asarray(previous_ref) != 0
    if prev.shape != ref.labels.shape:
        raise GeometryMismatchError(
            f"previous reference has shape {prev.shape}, this study {ref.labels.shape}; "
            "resample the previous study onto this study's grid first"
        )
    flags = []
    for comps in matching.ref_units:
        hit = False
        for r in comps:
            box = ref.box(r, margin=margin_voxels)
            sel = ref.labels[box] == r
            pv = prev[box]
            if margin_voxels > 0:
                pv = ndimage.binary_dilation(
                    pv, structure=ndimage.generate_binary_structure(3, 2), iterations=margin_voxels
                )
            if (pv & sel).any():
                hit = True
                break
        flags.append(not hit)
    return tuple(flags)


@dataclass(frozen=True)
class StudyOptions:
    """How one study is evaluated: matching, strata, surfaces (one record, not 12 arguments).

    Attributes:
        mode: ``"overlap"`` (one-to-one Hungarian) or ``"brats"`` (BraTS-METS).
        criterion: ``"iou"`` or ``"ior"`` for the ``overlap`` mode.
        match_threshold: Candidate pairs need a score strictly above this.
        match_objective: ``overlap`` mode: ``"overlap"`` (largest total score) or
            ``"pairs"`` (most pairs first), see :mod:`metstrack.metrics.matching`.
        dilation_voxels: Reference dilation of the ``brats`` mode.
        min_ref_volume_mm3: ``brats`` mode: ignore reference lesions at or below this.
        connectivity: 6, 18 or 26 for the connected components.
        tolerance_mm: Surface Dice tolerance.
        volume_bins_mm3: Stratum edges (10 mm3 is always added).
        beta: Beta of the F-beta score.
        hd95_penalty_mm: HD95 of missed/false lesions in the penalised lesion-wise score.
        new_lesion_margin_voxels: Dilation of the previous reference for the new-lesion test.

    Example:
        >>> StudyOptions(mode="brats", min_ref_volume_mm3=5.0).matching().mode
        'brats'
    """

    mode: MatchMode = "overlap"
    criterion: Criterion = "iou"
    match_threshold: float = 0.0
    match_objective: Objective = "overlap"
    dilation_voxels: int = BRATS_METS_DILATION_VOXELS
    min_ref_volume_mm3: float = 0.0
    connectivity: int = 26
    tolerance_mm: float = 1.0
    volume_bins_mm3: Sequence[float] = DEFAULT_VOLUME_BINS_MM3
    beta: float = 2.0
    hd95_penalty_mm: float = BRATS_HD95_PENALTY_MM
    new_lesion_margin_voxels: int = 0

    def matching(self) -> MatchingOptions:
        """The lesion-matching part of these options (validated there)."""
        return MatchingOptions(
            mode=self.mode,
            criterion=self.criterion,
            threshold=self.match_threshold,
            dilation_voxels=self.dilation_voxels,
            min_ref_volume_mm3=self.min_ref_volume_mm3,
            objective=self.match_objective,
        )


def evaluate_study(
    pred: np.ndarray | None,
    ref: np.ndarray,
    *,
    spacing_mm: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    options: StudyOptions | None = None,
    previous_ref: np.ndarray | None = None,
    ref_instances: np.ndarray | None = None,
    previous_ref_instances: np.ndarray | None = None,
    patient_id: str = "",
    study_id: str = "",
) -> StudyEvaluation:
    """Evaluate one study's prediction against its reference.

    Args:
        pred: (X, Y, Z) predicted mask (bool or integer; non-zero is lesion), or
            ``None`` for a missing prediction (evaluated as empty, flagged).
        ref: (X, Y, Z) reference mask, same shape.
        spacing_mm: Voxel spacing along X, Y, Z in mm (or give ``affine``).
        affine: (4, 4) voxel-to-world matrix (RAS, mm); gives spacing, voxel volume
            and world centroids.
        options: Matching, stratification and surface settings (defaults:
            one-to-one IoU > 0 matching, 26-connectivity), see :class:`StudyOptions`.
        previous_ref: Previous study's reference on this grid (for new lesions).
        ref_instances: This study's ground-truth instance map (identities).
        previous_ref_instances: The previous study's instance map.
        patient_id: Recorded in the result.
        study_id: Recorded in the result.

    Returns:
        A :class:`StudyEvaluation`.

    Raises:
        LabelError: A mask is not 3D, holds negative or non-integer values
            (a probability map).
        GeometryMismatchError: Shapes differ.
    """
    o = options or StudyOptions()
    mode, connectivity, tolerance_mm = o.mode, o.connectivity, o.tolerance_mm
    r = _as_mask(ref, "reference mask", name=study_id or "ref")
    missing = pred is None
    p = (
        np.zeros(r.shape, bool)
        if missing
        else _as_mask(pred, "prediction", name=study_id or "pred")
    )
    if p.shape != r.shape:
        raise GeometryMismatchError(
            f"{study_id or 'study'}: prediction shape {p.shape} "
            f"differs from reference shape {r.shape}"
        )
    spacing, aff, vv = resolve_geometry(r.shape, spacing_mm, affine)
    matching_options = o.matching()
    lp = label_foreground(p, connectivity=connectivity)
    lr = label_foreground(r, connectivity=connectivity)
    pm, rm = lp.map, lr.map
    psurf, rsurf = lp.surfaces, lr.surfaces
    overlaps = foreground_overlaps(lp, lr)
    matching = match_lesions(
        pm, rm, options=matching_options, voxel_volume_mm3=vv, overlaps=overlaps
    )
    has_prev = previous_ref is not None or (
        ref_instances is not None and previous_ref_instances is not None
    )
    flags = new_lesion_flags(
        rm,
        matching,
        previous_ref=previous_ref,
        ref_instances=ref_instances,
        previous_ref_instances=previous_ref_instances,
        margin_voxels=o.new_lesion_margin_voxels,
    )
    detection, strata, lesions = compute_detection(
        pm,
        rm,
        matching,
        spacing_mm=spacing,
        affine=aff,
        voxel_volume_mm3=vv,
        volume_bins_mm3=o.volume_bins_mm3,
        beta=o.beta,
        hd95_penalty_mm=o.hd95_penalty_mm,
        pred_surfaces=psurf,
        ref_surfaces=rsurf,
        unit_is_new=flags,
    )
    n_inter = sum(overlaps.values())
    voxel = voxel_metrics_from_parts(
        n_pred=int(pm.voxel_counts[1:].sum()),
        n_ref=int(rm.voxel_counts[1:].sum()),
        n_inter=n_inter,
        pred_surface=_stack(psurf[1:]),
        ref_surface=_stack(rsurf[1:]),
        spacing_mm=spacing,
        voxel_volume_mm3=vv,
        tolerance_mm=tolerance_mm,
    )
    if missing:
        log.info("%s: prediction missing; evaluated as empty (every lesion missed)", study_id)
    return StudyEvaluation(
        patient_id=str(patient_id),
        study_id=str(study_id),
        mode=mode,
        prediction_missing=missing,
        has_previous=has_prev,
        voxel=voxel,
        detection=detection,
        strata=strata,
        lesions=lesions,
    )
