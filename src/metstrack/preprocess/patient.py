"""One patient preprocessed onto its baseline grid: the unit of parallel work.

A worker owns the baseline it registers to, so :func:`preprocess_patient` is
what an executor maps over patients (:mod:`metstrack.preprocess.pipeline`);
each study goes through :func:`metstrack.preprocess.study.preprocess_study`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from metstrack.errors import MetstrackError
from metstrack.preprocess.config import PreprocessConfig, StudyOutcome
from metstrack.preprocess.outputs import is_study_done, recorded_outputs
from metstrack.preprocess.study import prepare_baseline, preprocess_study
from metstrack.types import Patient

log = logging.getLogger(__name__)


def preprocess_patient(
    patient: Patient,
    out_root: str | Path,
    cfg: PreprocessConfig,
    *,
    label_classes: tuple[int, ...] = (),
    coregistered_input: bool = False,
) -> list[StudyOutcome]:
    """Preprocess every unfinished study of one patient (the unit of parallel work).

    This is the function to map over patients with another engine (Dask, Ray):
    it only reads the patient's input files and writes under ``out_root``.

    Args:
        patient: The patient (studies in time order; the first is the baseline).
        out_root: Output dataset root.
        cfg: Preprocessing settings.
        label_classes: ``Cohort.label_classes`` of the patient's cohort (multi-class labels).
        coregistered_input: The cohort's layout co-registers a study's sequences
            (:attr:`metstrack.io.layouts.Layout.coregistered`; see ``cfg.shared_grid``).

    Returns:
        One :class:`StudyOutcome` per study. Errors of one study are caught and
        reported as ``failed``; a failing baseline fails every study of the patient.
    """
    out_root = Path(out_root)
    todo = [
        s for s in patient.studies if not is_study_done(out_root, patient.patient_id, s.study_id)
    ]
    outcomes = [
        StudyOutcome(
            patient.patient_id,
            s.study_id,
            "skipped",
            outputs=recorded_outputs(out_root, patient.patient_id, s.study_id),
        )
        for s in patient.studies
        if s not in todo
    ]
    if not todo:
        return outcomes
    t0 = time.perf_counter()
    try:
        baseline = prepare_baseline(patient, cfg)
    except MetstrackError as exc:
        log.info("patient %s failed: %s", patient.patient_id, exc)
        return outcomes + [
            StudyOutcome(
                patient.patient_id, s.study_id, "failed", str(exc), time.perf_counter() - t0
            )
            for s in todo
        ]
    for study in todo:
        ts = time.perf_counter()
        try:
            outs = preprocess_study(
                patient,
                study,
                baseline,
                out_root,
                cfg,
                label_classes=label_classes,
                coregistered_input=coregistered_input,
            )
            outcomes.append(
                StudyOutcome(
                    patient.patient_id, study.study_id, "done", "", time.perf_counter() - ts, outs
                )
            )
        except MetstrackError as exc:
            log.info("study %s/%s failed: %s", patient.patient_id, study.study_id, exc)
            outcomes.append(
                StudyOutcome(
                    patient.patient_id, study.study_id, "failed", str(exc), time.perf_counter() - ts
                )
            )
    order = {s.study_id: i for i, s in enumerate(patient.studies)}
    return sorted(outcomes, key=lambda o: order[o.study_id])
