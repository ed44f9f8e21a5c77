"""Longitudinal metrics over consecutive studies of a patient.

For each consecutive pair (previous, current) of a patient's studies:

- change in lesion count: ``count(current) - count(previous)``, computed for the
  reference and for the prediction from each study's own mask; the error is
  ``change_pred - change_ref`` (positive: the model reports more growth in the
  number of lesions than there is);
- change in total lesion volume (mm3) likewise;
- new-lesion sensitivity: of the current study's reference lesions with no
  counterpart in the previous study (see :mod:`metstrack.metrics.study` for how
  a counterpart is decided), the share the prediction detected. NaN when the
  current study has no new lesion or when new-lesion status is unknown (no
  previous reference on a common grid and no identities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from metstrack.metrics.study import StudyEvaluation


@dataclass(frozen=True)
class StudyPairChange:
    """Change between two consecutive studies of one patient.

    Attributes:
        patient_id: The patient.
        previous_study_id: The earlier study.
        study_id: The later study.
        ref_count_change: Reference lesion count change (components).
        pred_count_change: Predicted lesion count change.
        count_change_error: pred_count_change - ref_count_change.
        ref_volume_change_mm3: Reference total volume change.
        pred_volume_change_mm3: Predicted total volume change.
        volume_change_error_mm3: pred_volume_change_mm3 - ref_volume_change_mm3.
        new_status_known: Whether new-lesion status of the later study is known.
        n_new_ref: New reference lesions in the later study (0 when unknown).
        new_detected: Of those, detected by the prediction.
        new_lesion_sensitivity: new_detected / n_new_ref (NaN when 0 or unknown).
    """

    patient_id: str
    previous_study_id: str
    study_id: str
    ref_count_change: int
    pred_count_change: int
    count_change_error: int
    ref_volume_change_mm3: float
    pred_volume_change_mm3: float
    volume_change_error_mm3: float
    new_status_known: bool
    n_new_ref: int
    new_detected: int
    new_lesion_sensitivity: float


def compute_longitudinal(evaluations: Sequence[StudyEvaluation]) -> tuple[StudyPairChange, ...]:
    """Changes between consecutive studies of each patient.

    Args:
        evaluations: Study evaluations; within each ``patient_id`` they must be in
            time order (studies of different patients may interleave).

    Returns:
        One :class:`StudyPairChange` per consecutive pair, patients in first-seen order.
    """
    by_patient: dict[str, list[StudyEvaluation]] = {}
    for ev in evaluations:
        by_patient.setdefault(ev.patient_id, []).append(ev)
    out: list[StudyPairChange] = []
    for pid, evs in by_patient.items():
        for prev, cur in zip(evs, evs[1:], strict=False):
            a, b = prev.detection, cur.detection
            rc = b.ref_count - a.ref_count
            pc = b.pred_count - a.pred_count
            rv = b.ref_volume_mm3 - a.ref_volume_mm3
            pv = b.pred_volume_mm3 - a.pred_volume_mm3
            known = cur.has_previous
            out.append(
                StudyPairChange(
                    patient_id=pid,
                    previous_study_id=prev.study_id,
                    study_id=cur.study_id,
                    ref_count_change=rc,
                    pred_count_change=pc,
                    count_change_error=pc - rc,
                    ref_volume_change_mm3=rv,
                    pred_volume_change_mm3=pv,
                    volume_change_error_mm3=pv - rv,
                    new_status_known=known,
                    n_new_ref=b.n_new_ref if known else 0,
                    new_detected=b.new_detected if known else 0,
                    new_lesion_sensitivity=(
                        b.new_lesion_sensitivity if known and b.n_new_ref else math.nan
                    ),
                )
            )
    return tuple(out)
