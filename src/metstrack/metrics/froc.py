"""FROC analysis: lesion sensitivity against false positives per scan, over thresholds.

A model's operating point (a probability threshold) trades sensitivity for
false positives. Comparing two models at one shared threshold compares two
different trade-offs; comparing them at a common false-positive rate, with the
threshold of each picked on validation patients, compares the models. This
module computes exactly that, from probability maps and reference lesions:

* :func:`scan_froc` thresholds one scan's foreground probability at each
  threshold, labels the 26-connected components (dropping those under
  ``min_volume_mm3``) and records, per threshold, which reference lesions are
  detected and how many components are false positives. A reference lesion is
  **detected** when a predicted component overlaps it with an intersection over
  union of at least ``min_iou`` (default 0.1, the usual hit criterion of 3D
  detection FROCs, e.g. nnDetection's); a component that detects no reference
  lesion is a **false positive**. The IoU floor matters: with "any overlap" one
  component spilling over the whole brain at a low threshold detects every
  lesion with no false positive, and the operating point picked on validation
  goes straight to it. (``min_iou=0`` is that any-overlap rule. A component
  covering two lesions can detect both; the one-to-one matching of
  ``metstrack evaluate`` cannot.)
* :func:`froc_curve` pools scans into sensitivity per stratum (all, a volume
  range, new lesions) and FP per scan at each threshold.
* :func:`operating_threshold` picks, on validation scans, the lowest threshold
  whose FP per scan does not exceed a target.
* :func:`paired_bootstrap_difference` gives the patient-level paired bootstrap
  confidence interval of the difference in sensitivity between two models, each
  at its own threshold, on the same test patients.

Everything is NumPy in, records out; no files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from metstrack.core.lesions import label_components

#: Default threshold grid: dense near 1, where small lesions' peaks sit. Up to 0.9999: small
#: networks trained for a fixed number of steps are overconfident, and at 0.995 some still
#: made 2-3 false positives per validation scan (the 1,200-step benchmark, issue 17).
DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995,
    0.998, 0.999, 0.9995, 0.9999,
)  # fmt: skip

#: Default IoU from which an overlapping component detects a reference lesion (:func:`scan_froc`).
DEFAULT_MIN_IOU = 0.1


@dataclass(frozen=True)
class ScanFROC:
    """Detections of one scan at every threshold.

    Attributes:
        patient_id: The scan's patient (the unit the bootstrap resamples).
        thresholds: (T,) probability thresholds, increasing.
        detected: (T, L) bool: reference lesion ``l`` detected at threshold ``t``.
        false_positives: (T,) int: components overlapping no reference lesion.
        ref_volumes_mm3: (L,) reference lesion volumes in mm3.
        ref_new: (L,) bool: the lesion appeared after the patient's baseline study.
    """

    patient_id: str
    thresholds: np.ndarray
    detected: np.ndarray
    false_positives: np.ndarray
    ref_volumes_mm3: np.ndarray
    ref_new: np.ndarray


def scan_froc(
    probability: np.ndarray,
    reference_labels: np.ndarray,
    *,
    voxel_volume_mm3: float,
    patient_id: str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_volume_mm3: float = 0.0,
    ref_new: Sequence[bool] | None = None,
    min_iou: float = DEFAULT_MIN_IOU,
) -> ScanFROC:
    """Which reference lesions are found, and how many false components, at each threshold.

    Args:
        probability: (X, Y, Z) foreground probability in [0, 1].
        reference_labels: (X, Y, Z) reference lesion instance map (0 background,
            lesion ``k`` = value ``k``, 1..L; values need not be contiguous:
            lesions are taken in increasing value order).
        voxel_volume_mm3: Volume of one voxel in mm3 (from the voxel spacing).
        patient_id: The scan's patient.
        thresholds: Increasing probability thresholds.
        min_volume_mm3: Predicted components smaller than this are dropped
            (the checkpoint's size filter), before counting.
        ref_new: Per reference lesion (in increasing value order), whether it
            appeared after baseline; ``None``: none is new.
        min_iou: Intersection over union (component vs lesion, voxels) from which
            an overlapping component detects a lesion; 0 = any overlap.

    Returns:
        The :class:`ScanFROC` record.

    Raises:
        ValueError: Shapes differ, thresholds not increasing, ``ref_new`` of
            the wrong length, or ``min_iou`` outside [0, 1].
    """
    prob = np.asarray(probability, dtype=np.float32)
    ref = np.asarray(reference_labels)
    if prob.shape != ref.shape:
        raise ValueError(f"probability {prob.shape} and reference {ref.shape} differ in shape")
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim != 1 or th.size == 0 or np.any(np.diff(th) <= 0):
        raise ValueError(f"thresholds must be a non-empty increasing sequence, found {thresholds}")
    values = np.unique(ref[ref > 0])
    n_ref = int(values.size)
    # reference values -> 0..L-1 (L = background marker in the lookup)
    lookup = np.full(int(ref.max()) + 1 if ref.size else 1, n_ref, dtype=np.int64)
    lookup[values.astype(np.int64)] = np.arange(n_ref)
    ref_idx = lookup[ref.astype(np.int64)]
    volumes = np.bincount(ref_idx.ravel(), minlength=n_ref + 1)[:n_ref] * float(voxel_volume_mm3)
    new = np.zeros(n_ref, bool) if ref_new is None else np.asarray(ref_new, bool)
    if new.shape != (n_ref,):
        raise ValueError(f"ref_new has {new.size} entries for {n_ref} reference lesions")
    if not 0.0 <= float(min_iou) <= 1.0:
        raise ValueError(f"min_iou must lie in [0, 1], found {min_iou}")
    ref_voxels = np.bincount(ref_idx.ravel(), minlength=n_ref + 1)[:n_ref]
    min_voxels = float(min_volume_mm3) / float(voxel_volume_mm3)
    detected = np.zeros((th.size, n_ref), bool)
    fps = np.zeros(th.size, np.int64)
    for i, t in enumerate(th):
        labels, n = label_components(prob >= t)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= max(min_voxels, 1.0)
        keep[0] = False
        fg = labels > 0
        comp = labels[fg]
        hit_ref = ref_idx[fg]
        kept = keep[comp]
        comp, hit_ref = comp[kept], hit_ref[kept]
        on_lesion = hit_ref < n_ref
        # (component, lesion) pairs with their shared voxels, then their IoU
        detecting = np.zeros(n + 1, bool)
        if n_ref:
            pairs, inter = np.unique(
                comp[on_lesion].astype(np.int64) * n_ref + hit_ref[on_lesion], return_counts=True
            )
            pc, pl = pairs // n_ref, pairs % n_ref
            hit = inter / (sizes[pc] + ref_voxels[pl] - inter) >= float(min_iou)
            detected[i, np.unique(pl[hit])] = True
            detecting[np.unique(pc[hit])] = True
        fps[i] = int(np.count_nonzero(keep & ~detecting))
    return ScanFROC(
        patient_id=str(patient_id),
        thresholds=th,
        detected=detected,
        false_positives=fps,
        ref_volumes_mm3=volumes,
        ref_new=new,
    )


#: A reference-lesion selector: (volumes_mm3, new) -> bool mask of lesions in the stratum.
Stratum = Callable[[np.ndarray, np.ndarray], np.ndarray]


def stratum_all(volumes: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Every reference lesion."""
    return np.ones(volumes.shape, bool)


def stratum_volume(lo_mm3: float, hi_mm3: float) -> Stratum:
    """Reference lesions with ``lo_mm3 <= volume < hi_mm3``."""

    def select(volumes: np.ndarray, new: np.ndarray) -> np.ndarray:
        return (volumes >= lo_mm3) & (volumes < hi_mm3)

    return select


def stratum_new(volumes: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Reference lesions that appeared after baseline."""
    return new.copy()


@dataclass(frozen=True)
class FROCCurve:
    """Pooled FROC of a set of scans.

    Attributes:
        thresholds: (T,) thresholds.
        sensitivity: (T,) detected / reference lesions of the stratum (NaN when
            the stratum is empty).
        fp_per_scan: (T,) false positives per scan.
        n_lesions: Reference lesions in the stratum.
        n_scans: Scans pooled.
    """

    thresholds: np.ndarray
    sensitivity: np.ndarray
    fp_per_scan: np.ndarray
    n_lesions: int
    n_scans: int


def _check_grid(scans: Sequence[ScanFROC]) -> np.ndarray:
    if not scans:
        raise ValueError("no scans to pool")
    th = scans[0].thresholds
    for s in scans[1:]:
        if not np.array_equal(s.thresholds, th):
            raise ValueError(f"scan of {s.patient_id} uses another threshold grid")
    return th


def _counts(scans: Sequence[ScanFROC], stratum: Stratum) -> tuple[np.ndarray, int, np.ndarray]:
    """Per threshold: detected lesions of the stratum, lesions of the stratum, FPs."""
    th = _check_grid(scans)
    hits = np.zeros(th.size, np.int64)
    fps = np.zeros(th.size, np.int64)
    total = 0
    for s in scans:
        sel = stratum(s.ref_volumes_mm3, s.ref_new)
        hits += s.detected[:, sel].sum(axis=1)
        total += int(sel.sum())
        fps += s.false_positives
    return hits, total, fps


def froc_curve(scans: Sequence[ScanFROC], stratum: Stratum = stratum_all) -> FROCCurve:
    """Pool scans into one FROC curve for the lesions ``stratum`` selects."""
    hits, total, fps = _counts(scans, stratum)
    sens = hits / total if total else np.full(hits.shape, np.nan)
    return FROCCurve(
        thresholds=scans[0].thresholds.copy(),
        sensitivity=sens.astype(np.float64),
        fp_per_scan=fps / len(scans),
        n_lesions=total,
        n_scans=len(scans),
    )


def operating_threshold(validation: Sequence[ScanFROC], fp_per_scan_target: float) -> float:
    """The lowest threshold whose pooled FP per scan on ``validation`` is at most the target.

    When no threshold of the grid gets there, the highest threshold is returned
    (the fewest false positives the grid allows).
    """
    curve = froc_curve(validation)
    ok = np.flatnonzero(curve.fp_per_scan <= fp_per_scan_target)
    return float(curve.thresholds[ok[0]] if ok.size else curve.thresholds[-1])


def point_at(
    scans: Sequence[ScanFROC], threshold: float, stratum: Stratum = stratum_all
) -> tuple[float, float]:
    """(sensitivity, FP per scan) at one threshold of the grid (one run of :func:`at_operating_point`)."""
    return at_operating_point([(scans, threshold)], stratum)


#: One trained model's scans and the threshold it operates at (picked on validation).
Run = tuple[Sequence[ScanFROC], float]


def at_operating_point(runs: Sequence[Run], stratum: Stratum = stratum_all) -> tuple[float, float]:
    """Pooled (sensitivity, FP per scan) of one or more runs, each at its own threshold.

    Several runs (for example one per training seed) are pooled lesion by
    lesion and scan by scan.
    """
    hits = total = fps = scans = 0
    for run_scans, threshold in runs:
        i = _threshold_index(run_scans, threshold)
        for s in run_scans:
            sel = stratum(s.ref_volumes_mm3, s.ref_new)
            hits += int(s.detected[i, sel].sum())
            total += int(sel.sum())
            fps += int(s.false_positives[i])
            scans += 1
    if scans == 0:
        raise ValueError("no scans to pool")
    return (hits / total if total else float("nan")), fps / scans


def _threshold_index(scans: Sequence[ScanFROC], threshold: float) -> int:
    th = _check_grid(scans)
    hit = np.flatnonzero(np.isclose(th, threshold))
    if hit.size == 0:
        raise ValueError(f"threshold {threshold} is not on the grid {th.tolist()}")
    return int(hit[0])


@dataclass(frozen=True)
class PairedDifference:
    """Difference in sensitivity (A - B) at each model's own threshold, with a bootstrap CI.

    Attributes:
        difference: Point estimate on the test patients.
        ci_low: Lower bound of the percentile interval.
        ci_high: Upper bound.
        n_patients: Test patients resampled.
        n_bootstrap: Replicates used (replicates without a lesion of the stratum
            are left out of the interval).
        confidence: Interval level, e.g. 0.95.
    """

    difference: float
    ci_low: float
    ci_high: float
    n_patients: int
    n_bootstrap: int
    confidence: float


def _per_patient(
    runs: Sequence[Run], stratum: Stratum, ids: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Detected and reference lesion counts per patient, summed over the runs."""
    pos = {p: k for k, p in enumerate(ids)}
    hits = np.zeros(len(ids))
    tot = np.zeros(len(ids))
    for run_scans, threshold in runs:
        i = _threshold_index(run_scans, threshold)
        for s in run_scans:
            sel = stratum(s.ref_volumes_mm3, s.ref_new)
            hits[pos[s.patient_id]] += int(s.detected[i, sel].sum())
            tot[pos[s.patient_id]] += int(sel.sum())
    return hits, tot


def _patients(runs: Sequence[Run]) -> list[str]:
    return sorted({s.patient_id for run_scans, _ in runs for s in run_scans})


def paired_bootstrap_difference(
    a: Sequence[Run],
    b: Sequence[Run],
    *,
    stratum: Stratum = stratum_all,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Paired patient-level bootstrap of sensitivity(A) - sensitivity(B).

    ``a`` and ``b`` are the runs of two models (one per training seed, each at
    its own operating threshold) on the same test patients. Each replicate
    resamples patients with replacement and recomputes both pooled
    sensitivities on the same resample, so the interval accounts for the
    patients being shared.

    Raises:
        ValueError: The models were run on different patients.
    """
    ids = _patients(a)
    if ids != _patients(b):
        raise ValueError("the two models were not evaluated on the same patients")
    ha, ta = _per_patient(a, stratum, ids)
    hb, tb = _per_patient(b, stratum, ids)
    point = (
        float(ha.sum() / ta.sum() - hb.sum() / tb.sum()) if ta.sum() and tb.sum() else float("nan")
    )
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=n_bootstrap)
    den_a, den_b = w @ ta, w @ tb
    ok = (den_a > 0) & (den_b > 0)
    diffs = (w[ok] @ ha) / den_a[ok] - (w[ok] @ hb) / den_b[ok]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha]) if diffs.size else (np.nan, np.nan)
    return PairedDifference(
        difference=point,
        ci_low=float(lo),
        ci_high=float(hi),
        n_patients=len(ids),
        n_bootstrap=int(ok.sum()),
        confidence=confidence,
    )
