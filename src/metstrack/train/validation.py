"""Validation scores from the lesion-wise metrics, pooled over studies and processes.

Each labelled validation study is scored with
:func:`metstrack.metrics.study.evaluate_study` (26-connected lesions,
one-to-one overlap matching). The counts are summed over every study of every
validation patient (and over DDP processes), then turned into pooled scores:

* ``lesion_f1``: 2 TP / (2 TP + FP + FN) over all lesions,
* ``small_sensitivity``: detected / reference lesions under 10 mm3,
* ``fp_per_scan``: false-positive lesions per labelled study,
* ``dice``: mean voxel Dice over labelled studies (studies where both masks
  are empty are left out).

These are the pooled definitions of :mod:`metstrack.metrics.cohort` (ratios
of sums, Dice as a mean of defined values), kept as plain sums here so they
can be all-reduced across DDP processes.

The checkpoint score is the configured metric (``lesion_f1`` by default)
plus ``1e-3 * dice`` as a tie-break; an undefined metric (no lesion anywhere)
counts as 0.

One validation's scores travel as a :class:`ValidationScores` record
(``TrainResult.scores``, the module's ``last_scores``); its :meth:`~ValidationScores.as_dict`
is the logged (``val/<name>``), CSV and JSON form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from metstrack.errors import did_you_mean
from metstrack.metrics.detection import SMALL_LESION_MM3
from metstrack.metrics.study import evaluate_study

#: Weight of Dice in the checkpoint score (breaks ties of the main metric).
TIE_BREAK_WEIGHT = 1e-3


@dataclass
class ValidationTally:
    """Summed counts of validation studies (add tallies with ``+=``).

    Attributes:
        n_scans: Labelled studies scored.
        tp: Detected reference lesions.
        fp: Predicted lesions matching no reference lesion.
        fn: Missed reference lesions.
        small_tp: Detected reference lesions under 10 mm3.
        small_ref: Reference lesions under 10 mm3.
        dice_sum: Sum of per-study voxel Dice (defined ones).
        dice_n: Studies with a defined Dice.
    """

    n_scans: float = 0.0
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    small_tp: float = 0.0
    small_ref: float = 0.0
    dice_sum: float = 0.0
    dice_n: float = 0.0

    def __iadd__(self, other: ValidationTally) -> ValidationTally:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_array(self) -> np.ndarray:
        """float64 vector of the counts in field order (for all-reduce)."""
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> ValidationTally:
        """Inverse of :meth:`as_array`."""
        return cls(*(float(v) for v in values))

    def scores(self) -> dict[str, float]:
        """Pooled scores: lesion_f1, small_sensitivity, fp_per_scan, dice, n_scans (NaN if undefined)."""
        den = 2 * self.tp + self.fp + self.fn
        return {
            "lesion_f1": 2 * self.tp / den if den else math.nan,
            "small_sensitivity": self.small_tp / self.small_ref if self.small_ref else math.nan,
            "fp_per_scan": self.fp / self.n_scans if self.n_scans else math.nan,
            "dice": self.dice_sum / self.dice_n if self.dice_n else math.nan,
            "n_scans": self.n_scans,
        }


#: Names of the pooled scores, in their logged order (then ``score``).
POOLED_NAMES: tuple[str, ...] = ("lesion_f1", "small_sensitivity", "fp_per_scan", "dice", "n_scans")


@dataclass(frozen=True)
class ValidationScores:
    """The scores of one validation (NaN where undefined).

    Attributes:
        lesion_f1: 2 TP / (2 TP + FP + FN) over all lesions.
        small_sensitivity: Detected / reference lesions under 10 mm3.
        fp_per_scan: False-positive lesions per labelled study.
        dice: Mean voxel Dice over labelled studies.
        n_scans: Labelled studies scored.
        score: The checkpoint score (:func:`checkpoint_score` of the configured metric).
        epoch: Epoch of the validation when it comes from the run's history, else ``None``.
        step: Global step of the validation when it comes from the history, else ``None``.
    """

    lesion_f1: float = math.nan
    small_sensitivity: float = math.nan
    fp_per_scan: float = math.nan
    dice: float = math.nan
    n_scans: float = 0.0
    score: float = math.nan
    epoch: float | None = None
    step: float | None = None

    @classmethod
    def of(cls, tally: ValidationTally, metric: str) -> ValidationScores:
        """The pooled scores of ``tally`` with the checkpoint score of ``metric``."""
        pooled = tally.scores()
        return cls(**pooled, score=checkpoint_score(pooled, metric))

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> ValidationScores:
        """Inverse of :meth:`as_dict` (a history row; other keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in values.items() if k in names})

    def get(self, name: str) -> float:
        """The score called ``name`` (``lesion_f1``, ``dice``, ..., ``score``).

        Raises:
            KeyError: Unknown name (with the valid names and a suggestion).
        """
        valid = (*POOLED_NAMES, "score")
        if name not in valid:
            raise KeyError(f"unknown validation score {name!r}; {did_you_mean(name, valid)}")
        return float(getattr(self, name))

    def as_dict(self) -> dict[str, float]:
        """Logged / JSON form: ``epoch`` and ``step`` when known, then the scores
        (``lesion_f1``, ``small_sensitivity``, ``fp_per_scan``, ``dice``, ``n_scans``, ``score``)."""
        when = {k: v for k, v in (("epoch", self.epoch), ("step", self.step)) if v is not None}
        return {**when, **{k: getattr(self, k) for k in (*POOLED_NAMES, "score")}}


def checkpoint_score(scores: Mapping[str, float], metric: str) -> float:
    """The value the best checkpoint maximises: ``metric + 1e-3 * dice`` (NaN counts as 0)."""

    def z(v: float) -> float:
        return 0.0 if v is None or math.isnan(v) else float(v)

    return z(scores[metric]) + TIE_BREAK_WEIGHT * z(scores["dice"])


def score_study(
    pred: np.ndarray, ref: np.ndarray, *, spacing_mm: tuple[float, float, float]
) -> ValidationTally:
    """Tally one study.

    Only the spacing travels with a validation batch (``SequenceBatch.spacing_mm``),
    so :func:`~metstrack.metrics.study.evaluate_study` stands a diagonal affine
    (:func:`metstrack.core.affine.affine_from_spacing`) in for the study's: every
    count tallied here depends on the spacing alone, so that is exact.

    Args:
        pred: (X, Y, Z) binary prediction.
        ref: (X, Y, Z) binary reference.
        spacing_mm: Voxel spacing (X, Y, Z) in mm.
    """
    ev = evaluate_study(pred, ref, spacing_mm=spacing_mm)
    det = ev.detection
    small_tp = small_ref = 0
    for s in ev.strata:
        if s.upper_mm3 <= SMALL_LESION_MM3:
            small_tp += s.tp
            small_ref += s.n_ref
    dice = ev.voxel.dice
    defined = not math.isnan(dice)
    return ValidationTally(
        n_scans=1,
        tp=det.tp,
        fp=det.fp,
        fn=det.fn,
        small_tp=small_tp,
        small_ref=small_ref,
        dice_sum=dice if defined else 0.0,
        dice_n=1 if defined else 0,
    )
