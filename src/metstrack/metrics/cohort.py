"""Cohort aggregation with patient-level bootstrap confidence intervals.

Two kinds of cohort estimate:

- *pooled* detection rates: sums over every study, then one ratio (e.g. lesion
  sensitivity = sum TP / sum (TP + FN)); studies without lesions still count.
  FP per scan is sum FP / number of studies.
- *mean* quality scores: the mean over studies where the value is defined
  (Dice, HD95, lesion-wise scores, count and volume errors); NaN values are
  skipped and ``n_defined`` says how many studies contributed.

Both are ratios of per-patient sums, so the bootstrap resamples *patients*
with replacement (studies of one patient are correlated) and recomputes the
ratio; the interval is the percentile interval of the resampled values, with a
seeded generator so the same seed gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from metstrack.metrics.detection import SMALL_LESION_MM3, bin_label
from metstrack.metrics.longitudinal import StudyPairChange
from metstrack.metrics.study import StudyEvaluation

SMALL_STRATUM = bin_label(0.0, SMALL_LESION_MM3)


@dataclass(frozen=True)
class MetricEstimate:
    """A cohort estimate with its bootstrap confidence interval.

    Attributes:
        name: Metric name (column names of the summary table).
        kind: ``"pooled"`` (ratio of sums) or ``"mean"`` (mean of defined study values).
        value: The estimate (NaN when no study defines it).
        ci_low: Lower bound of the bootstrap interval (NaN without bootstrap).
        ci_high: Upper bound.
        n_defined: Studies (or study pairs) that contributed.
    """

    name: str
    kind: str
    value: float
    ci_low: float
    ci_high: float
    n_defined: int


@dataclass(frozen=True)
class HeadlineMetrics:
    """The numbers a training run watches on every validation pass.

    Attributes:
        lesion_f1: Pooled lesion F1 = 2 TP / (2 TP + FP + FN).
        lesion_sensitivity: Pooled TP / (TP + FN).
        small_lesion_sensitivity: Pooled sensitivity for reference lesions < 10 mm3.
        fp_per_scan: Mean false positives per study.
        dice: Mean voxel Dice over studies where it is defined.
        lesionwise_dice: Mean penalised (BraTS-style) lesion-wise Dice.
        n_studies: Studies evaluated.
    """

    lesion_f1: float
    lesion_sensitivity: float
    small_lesion_sensitivity: float
    fp_per_scan: float
    dice: float
    lesionwise_dice: float
    n_studies: int


@dataclass(frozen=True)
class CohortSummary:
    """Cohort-level results.

    Attributes:
        n_patients: Patients evaluated.
        n_studies: Studies evaluated.
        n_missing_predictions: Studies whose prediction was missing (all missed).
        n_bootstrap: Bootstrap resamples (0: no intervals).
        confidence: Interval coverage (e.g. 0.95).
        seed: Bootstrap seed.
        headline: The headline point estimates.
        metrics: Every estimate, in a fixed order.
    """

    n_patients: int
    n_studies: int
    n_missing_predictions: int
    n_bootstrap: int
    confidence: float
    seed: int
    headline: HeadlineMetrics
    metrics: tuple[MetricEstimate, ...]

    def metric(self, name: str) -> MetricEstimate:
        """The estimate called ``name``."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no metric {name!r}; have {[m.name for m in self.metrics]}")


# (name, kind, numerator(study), denominator(study)); pooled: sums; mean: value / defined.
_Study = Callable[[StudyEvaluation], float]


def _pooled(num: _Study, den: _Study) -> tuple[str, _Study, _Study]:
    return ("pooled", num, den)


def _mean(get: _Study) -> tuple[str, _Study, _Study]:
    return ("mean", lambda e: _nz(get(e)), lambda e: float(not math.isnan(get(e))))


def _nz(x: float) -> float:
    return 0.0 if math.isnan(x) else float(x)


def _study_metrics(strata_names: Sequence[str]) -> list[tuple[str, tuple[str, _Study, _Study]]]:
    out: list[tuple[str, tuple[str, _Study, _Study]]] = [
        ("lesion_f1", _pooled(lambda e: 2 * e.detection.tp, lambda e: _f1_den(e))),
        (
            "lesion_sensitivity",
            _pooled(lambda e: e.detection.tp, lambda e: e.detection.tp + e.detection.fn),
        ),
        (
            "lesion_precision",
            _pooled(lambda e: e.detection.tp_pred, lambda e: e.detection.tp_pred + e.detection.fp),
        ),
        ("lesion_f_beta", _pooled(lambda e: _fb(e)[0], lambda e: _fb(e)[1])),
        ("fp_per_scan", _pooled(lambda e: e.detection.fp, lambda e: 1.0)),
        (
            "new_lesion_sensitivity",
            _pooled(lambda e: e.detection.new_detected, lambda e: e.detection.n_new_ref),
        ),
    ]
    for s in strata_names:
        out.append(
            (
                f"sensitivity_{s}",
                _pooled(lambda e, s=s: e.stratum(s).tp, lambda e, s=s: e.stratum(s).n_ref),
            )
        )
        out.append((f"fp_per_scan_{s}", _pooled(lambda e, s=s: e.stratum(s).fp, lambda e: 1.0)))
    for name, get in [
        ("dice", lambda e: e.voxel.dice),
        ("hd95_mm", lambda e: e.voxel.hd95_mm),
        ("asd_mm", lambda e: e.voxel.asd_mm),
        ("surface_dice", lambda e: e.voxel.surface_dice),
        ("lesion_dice", lambda e: e.detection.lesion_dice),
        ("lesion_hd95_mm", lambda e: e.detection.lesion_hd95_mm),
        ("lesionwise_dice", lambda e: e.detection.lesionwise_dice),
        ("lesionwise_hd95_mm", lambda e: e.detection.lesionwise_hd95_mm),
        ("count_abs_error", lambda e: float(e.detection.count_abs_error)),
        ("count_rel_error", lambda e: e.detection.count_rel_error),
        ("volume_abs_error_mm3", lambda e: e.detection.volume_abs_error_mm3),
        ("volume_rel_error", lambda e: e.detection.volume_rel_error),
    ]:
        out.append((name, _mean(get)))
    return out


def _f1_den(e: StudyEvaluation) -> float:
    t = e.detection
    return 2 * t.tp + t.fp + t.fn


def _fb(e: StudyEvaluation) -> tuple[float, float]:
    t = e.detection
    b2 = t.beta * t.beta
    return (1 + b2) * t.tp, (1 + b2) * t.tp + b2 * t.fn + t.fp


def _pair_metrics() -> list[tuple[str, Callable[[StudyPairChange], float]]]:
    return [
        ("count_change_abs_error", lambda c: abs(c.count_change_error)),
        ("count_change_error", lambda c: float(c.count_change_error)),
        ("volume_change_abs_error_mm3", lambda c: abs(c.volume_change_error_mm3)),
        ("volume_change_error_mm3", lambda c: c.volume_change_error_mm3),
    ]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _bootstrap_weights(n_patients: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(B, P) multiplicities of each patient in each resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_patients, size=(n_bootstrap, n_patients))
    flat = idx + (np.arange(n_bootstrap) * n_patients)[:, None]
    return (
        np.bincount(flat.ravel(), minlength=n_bootstrap * n_patients)
        .reshape(n_bootstrap, n_patients)
        .astype(np.float64)
    )


def _estimate(
    name: str,
    kind: str,
    num_p: np.ndarray,
    den_p: np.ndarray,
    n_defined: int,
    weights: np.ndarray | None,
    confidence: float,
) -> MetricEstimate:
    value = _ratio(num_p.sum(), den_p.sum())
    lo = hi = math.nan
    if weights is not None and not math.isnan(value):
        nb, db = weights @ num_p, weights @ den_p
        with np.errstate(invalid="ignore", divide="ignore"):
            rb = np.where(db > 0, nb / np.where(db > 0, db, 1.0), np.nan)
        rb = rb[np.isfinite(rb)]
        if rb.size:
            a = (1.0 - confidence) / 2.0
            lo, hi = (float(x) for x in np.percentile(rb, [100 * a, 100 * (1 - a)]))
    return MetricEstimate(name, kind, value, lo, hi, int(n_defined))


def headline_metrics(evaluations: Sequence[StudyEvaluation]) -> HeadlineMetrics:
    """Headline point estimates without bootstrap (cheap enough for every epoch).

    Args:
        evaluations: Study evaluations.

    Returns:
        :class:`HeadlineMetrics` (NaN where no study defines a value).
    """
    tp = sum(e.detection.tp for e in evaluations)
    fp = sum(e.detection.fp for e in evaluations)
    fn = sum(e.detection.fn for e in evaluations)
    s_tp = sum(e.stratum(SMALL_STRATUM).tp for e in evaluations)
    s_n = sum(e.stratum(SMALL_STRATUM).n_ref for e in evaluations)
    dice = [e.voxel.dice for e in evaluations if not math.isnan(e.voxel.dice)]
    lw = [
        e.detection.lesionwise_dice
        for e in evaluations
        if not math.isnan(e.detection.lesionwise_dice)
    ]
    return HeadlineMetrics(
        lesion_f1=_ratio(2 * tp, 2 * tp + fp + fn),
        lesion_sensitivity=_ratio(tp, tp + fn),
        small_lesion_sensitivity=_ratio(s_tp, s_n),
        fp_per_scan=_ratio(fp, len(evaluations)),
        dice=float(np.mean(dice)) if dice else math.nan,
        lesionwise_dice=float(np.mean(lw)) if lw else math.nan,
        n_studies=len(evaluations),
    )


def summarize_cohort(
    evaluations: Sequence[StudyEvaluation],
    *,
    pairs: Sequence[StudyPairChange] = (),
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CohortSummary:
    """Cohort estimates with patient-level bootstrap confidence intervals.

    Args:
        evaluations: Study evaluations (``patient_id`` groups them for the bootstrap).
        pairs: Longitudinal changes (:func:`metstrack.metrics.longitudinal.compute_longitudinal`).
        n_bootstrap: Resamples of patients; 0 skips the intervals (NaN bounds).
        confidence: Coverage of the percentile interval.
        seed: Seed of the resampling.

    Returns:
        A :class:`CohortSummary`.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    patients = list(
        dict.fromkeys([e.patient_id for e in evaluations] + [c.patient_id for c in pairs])
    )
    pidx = {p: i for i, p in enumerate(patients)}
    n_p = len(patients)
    weights = _bootstrap_weights(n_p, n_bootstrap, seed) if n_bootstrap and n_p else None
    strata = [s.stratum for s in evaluations[0].strata] if evaluations else [SMALL_STRATUM]
    estimates: list[MetricEstimate] = []
    for name, (kind, num, den) in _study_metrics(strata):
        num_p, den_p = np.zeros(n_p), np.zeros(n_p)
        n_def = 0
        for e in evaluations:
            d = float(den(e))
            num_p[pidx[e.patient_id]] += float(num(e))
            den_p[pidx[e.patient_id]] += d
            n_def += d > 0
        estimates.append(_estimate(name, kind, num_p, den_p, n_def, weights, confidence))
    for name, get in _pair_metrics():
        num_p, den_p = np.zeros(n_p), np.zeros(n_p)
        n_def = 0
        for c in pairs:
            v = get(c)
            if not math.isnan(v):
                num_p[pidx[c.patient_id]] += v
                den_p[pidx[c.patient_id]] += 1
                n_def += 1
        estimates.append(_estimate(name, "mean", num_p, den_p, n_def, weights, confidence))
    return CohortSummary(
        n_patients=n_p,
        n_studies=len(evaluations),
        n_missing_predictions=sum(e.prediction_missing for e in evaluations),
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
        headline=headline_metrics(evaluations),
        metrics=tuple(estimates),
    )
