"""Tracking a whole cohort: finding masks, running the tracker, writing outputs.

Outputs of :func:`write_outputs` under ``out``::

    tracked/patientId/<P>/studyId/<S>/tracked.nii.gz   int32 lesion IDs, baseline grid
    trajectories.csv    one row per lesion and study (metstrack.tracking.trajectory)
    burden.csv          one row per patient and study
    rates.csv           one row per patient: monthly rates of change
    response.csv        one row per follow-up: RANO-BM and volumetric response
    local_control.csv   one row per radiosurgery target
    timelines/<P>.png, timelines/<P>.svg
    track_config.json   the resolved configuration and the inputs

Every file is written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from metstrack.config import save_config
from metstrack.core import schema
from metstrack.core.atomic import sweep_stale_temps, write_csv_atomic
from metstrack.errors import DatasetError, MetstrackError
from metstrack.execution.executor import Executor, LocalExecutor
from metstrack.io.figures import plot_timeline
from metstrack.io.nifti import read_label, write_volume
from metstrack.io.release import read_release
from metstrack.io.tracks import GT_TRANSFORMS, MaskSource, read_transforms, tracked_map_path
from metstrack.tracking.config import TrackConfig
from metstrack.tracking.records import TrackingResult
from metstrack.tracking.response import (
    LOCAL_CONTROL_COLUMNS,
    RESPONSE_COLUMNS,
    assess_response,
    local_control,
)
from metstrack.tracking.tracker import track_patient
from metstrack.tracking.trajectory import BURDEN_COLUMNS, TRAJECTORY_COLUMNS, patient_rates
from metstrack.types import Cohort, Patient

if TYPE_CHECKING:
    from metstrack.core.mapping import StudyTransform

log = logging.getLogger(__name__)


def _matrix(t: np.ndarray | StudyTransform | None) -> np.ndarray | None:
    if t is None:
        return None
    return np.asarray(getattr(t, "baseline_to_study", t), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class CohortTracking:
    """Tables of a tracked cohort.

    Attributes:
        results: Per patient, the :class:`TrackingResult` (``tracked_maps`` empty when
            they were written on the fly with ``maps_out``).
        trajectories, burden, rates, response, local_control: Concatenated tables.
        skipped: ``(patient, study, reason)`` for studies left out (no mask).
    """

    results: tuple[TrackingResult, ...]
    trajectories: pd.DataFrame
    burden: pd.DataFrame
    rates: pd.DataFrame
    response: pd.DataFrame
    local_control: pd.DataFrame
    skipped: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)


def treatment_days(cohort: Cohort, patient_id: str) -> list[float]:
    """Days from baseline of a patient's radiosurgery events (visit_class 2)."""
    offset = 0.0
    for cp in cohort.clinical_patients:
        if cp.patient_id == patient_id:
            offset = float(cp.first_srs_days_from_baseline_scan)
    return sorted(
        e.days_from_first_srs + offset
        for e in cohort.clinical_events
        if e.patient_id == patient_id and e.visit_class == 2
    )


def track_one(
    patient: Patient,
    source: MaskSource,
    *,
    config: TrackConfig,
    transforms: Mapping[tuple[str, str], np.ndarray | StudyTransform] | None = None,
) -> tuple[TrackingResult | None, list[tuple[str, str, str]]]:
    """Read one patient's masks and track them (studies without a mask are skipped)."""
    skipped: list[tuple[str, str, str]] = []
    studies, masks, tfs = [], [], []
    for st in patient.studies:
        p = source.path(st)
        if p is None:
            skipped.append((patient.patient_id, st.study_id, f"no {source.kind} mask"))
            continue
        vol = read_label(p, binary=False)
        studies.append(st)
        masks.append(vol)
        if transforms is not None:
            tfs.append(transforms.get((patient.patient_id, st.study_id)))
    if not studies:
        return None, skipped
    for pid, sid, why in skipped:
        log.warning("patient %s study %s skipped: %s", pid, sid, why)
    grid = next((t.baseline_grid for t in tfs if hasattr(t, "baseline_grid")), None)
    if transforms is not None and tfs[0] is None and grid is None:
        tfs[0] = np.eye(4)
    if transforms is not None:
        missing = [s.study_id for s, t in zip(studies, tfs, strict=True) if t is None]
        if missing:
            raise DatasetError(
                f"transforms table has no baseline_to_study for patient {patient.patient_id} "
                f"studies {', '.join(missing)}"
            )
    base_day = studies[0].days_from_baseline
    result = track_patient(
        masks,
        [s.days_from_baseline - base_day for s in studies],
        config=config,
        patient_id=patient.patient_id,
        study_ids=[s.study_id for s in studies],
        baseline_to_study=[_matrix(t) for t in tfs] if transforms is not None else None,
        baseline_grid=grid,
    )
    return result, skipped


def track_patient_task(
    item: tuple[Patient, Mapping[tuple[str, str], np.ndarray | StudyTransform] | None],
    source: MaskSource,
    config: TrackConfig,
    maps_out: str | Path | None,
) -> tuple[TrackingResult | None, list[tuple[str, str, str]]]:
    """Track one patient on a worker: :func:`track_one`, then its maps written under ``maps_out``.

    ``item`` is the patient and its own transforms (``None``: co-registered masks). With
    ``maps_out`` the written maps are dropped from the returned result.

    Raises:
        MetstrackError: A mask cannot be read or is not co-registered (the patient named).
    """
    patient, transforms = item
    try:
        res, skipped = track_one(patient, source, config=config, transforms=transforms)
    except MetstrackError as exc:
        raise type(exc)(f"patient {patient.patient_id}: {exc}") from exc
    if res is not None and maps_out is not None:
        _write_maps(res, maps_out)
        res = replace(res, tracked_maps=())
    return res, skipped


def track_cohort(
    cohort: Cohort,
    source: MaskSource,
    *,
    config: TrackConfig,
    transforms: Mapping[tuple[str, str], np.ndarray | StudyTransform] | None = None,
    patients: tuple[str, ...] = (),
    on_patient: Callable[[str], None] | None = None,
    maps_out: str | Path | None = None,
    executor: Executor | None = None,
) -> CohortTracking:
    """Track every patient of a cohort and build the cohort tables.

    Args:
        cohort: The dataset (e.g. from ``metstrack.io.release.read_release``).
        source: Where the masks are.
        config: Tracking settings.
        transforms: (PatientID, StudyID) -> baseline_to_study matrix or
            StudyTransform (:func:`read_transforms`); ``None`` when the masks are
            already co-registered.
        patients: Only these PatientIDs (all when empty).
        on_patient: Called with each PatientID when it is done (progress).
        maps_out: When given, each patient's tracked maps are written under this
            output folder as soon as the patient is tracked and then dropped
            from the result, so memory does not grow with the cohort.
        executor: Where the patients run (:mod:`metstrack.execution.executor`);
            ``None``: one after the other in this process. The cohort tables are
            built here, in input order, whatever order the patients finish in.

    Returns:
        A :class:`CohortTracking`.

    Raises:
        MetstrackError: A mask cannot be read or is not co-registered (the
            message names the patient).
    """
    chosen = [cohort.patient(p) for p in patients] if patients else list(cohort.patients)
    items = [
        (
            p,
            None
            if transforms is None
            else {k: v for k, v in transforms.items() if k[0] == p.patient_id},
        )
        for p in chosen
    ]
    tracked: list[tuple[TrackingResult | None, list[tuple[str, str, str]]] | None]
    tracked = [None] * len(chosen)
    pool = executor if executor is not None else LocalExecutor(1)
    for i, done in pool.map_unordered(track_patient_task, items, source, config, maps_out):
        tracked[i] = done
        if on_patient is not None:
            on_patient(chosen[i].patient_id)
    if maps_out is not None:
        sweep_stale_temps(maps_out)  # a killed worker's temporaries (its patient was rerun)
    results, skipped = [], []
    trajs, burdens, resps, lcs = [], [], [], []
    for patient, done in zip(chosen, tracked, strict=True):
        res, sk = done  # type: ignore[misc]
        skipped.extend(sk)
        if res is not None:
            results.append(res)
            trajs.append(res.trajectories)
            burdens.append(res.burden)
            resps.append(assess_response(res, config=config.response))
            tgts = [t for t in cohort.radiosurgery_targets if t.patient_id == patient.patient_id]
            if tgts:
                tf = None
                if transforms is not None:
                    tf = {
                        s: _matrix(transforms[(patient.patient_id, s)])
                        for s in res.study_ids
                        if (patient.patient_id, s) in transforms
                    }
                lcs.append(local_control(res, tgts, config=config.response, baseline_to_study=tf))

    def cat(frames: list[pd.DataFrame], cols: tuple[str, ...]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(cols))

    burden = cat(burdens, BURDEN_COLUMNS)
    return CohortTracking(
        results=tuple(results),
        trajectories=cat(trajs, TRAJECTORY_COLUMNS),
        burden=burden,
        rates=patient_rates(burden, method=config.rate_method),
        response=cat(resps, RESPONSE_COLUMNS),
        local_control=cat(lcs, LOCAL_CONTROL_COLUMNS),
        skipped=tuple(skipped),
    )


def _write_maps(res: TrackingResult, out: str | Path) -> list[Path]:
    """Write a patient's tracked maps (nothing when they were already written and dropped)."""
    return [
        write_volume(vol, tracked_map_path(out, res.patient_id, sid), dtype=np.int32)
        for sid, vol in zip(res.study_ids, res.tracked_maps, strict=False)
    ]


def write_outputs(
    tracking: CohortTracking,
    out: str | Path,
    *,
    cohort: Cohort | None = None,
    figures: bool = True,
) -> list[Path]:
    """Write tracked maps, tables and timelines of a tracked cohort (atomically).

    Args:
        tracking: Output of :func:`track_cohort`.
        out: Output folder (created).
        cohort: Gives treatment events for the timelines.
        figures: Write ``timelines/<P>.png`` and ``.svg``.

    Returns:
        Every written path.
    """
    out = Path(out)
    written: list[Path] = []
    for res in tracking.results:
        written.extend(_write_maps(res, out))
    for name, frame in (
        ("trajectories.csv", tracking.trajectories),
        ("burden.csv", tracking.burden),
        ("rates.csv", tracking.rates),
        ("response.csv", tracking.response),
        ("local_control.csv", tracking.local_control),
    ):
        written.append(write_csv_atomic(out / name, frame))
    if figures:
        for res in tracking.results:
            days = treatment_days(cohort, res.patient_id) if cohort is not None else []
            written.extend(
                plot_timeline(
                    res.trajectories, out / "timelines" / res.patient_id, treatment_days=days
                )
            )
    return written


def track_dataset(
    data: str | Path,
    out: str | Path,
    source: MaskSource,
    *,
    config: TrackConfig | None = None,
    transforms: str | Path | None = None,
    patients: tuple[str, ...] = (),
    figures: bool = True,
    on_patient: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> CohortTracking:
    """``metstrack track`` as a function: track a release dataset and write every output.

    Args:
        data: Release dataset root.
        out: Output folder (tables, tracked maps, timelines, ``track_config.json``).
        source: Where each study's mask comes from; for ``ground-truth`` the
            synthetic cohort's true transforms are used unless ``transforms`` is given.
        config: Tracking settings.
        transforms: A transforms CSV or a folder written by ``metstrack
            preprocess``; masks are then mapped to each patient's baseline grid first.
        patients: PatientIDs to track (empty: all).
        figures: Draw the timelines (when ``config.figures`` allows it too).
        on_patient: Called with each tracked PatientID.
        executor: Where the patients run (``None``: this process).

    Returns:
        The tracked cohort's tables.
    """
    data, out = Path(data), Path(out)
    cfg = config or TrackConfig()
    cohort = read_release(data)
    truth = data / schema.GROUND_TRUTH_DIR / GT_TRANSFORMS
    if source.kind == "ground-truth" and transforms is None and truth.is_file():
        transforms = truth
    tfs = read_transforms(transforms) if transforms is not None else None
    result = track_cohort(
        cohort,
        source,
        config=cfg,
        transforms=tfs,
        patients=patients,
        on_patient=on_patient,
        maps_out=out,
        executor=executor,
    )
    write_outputs(result, out, cohort=cohort, figures=figures and cfg.figures)
    save_config(
        cfg,
        out / "track_config.json",
        data=str(data),
        mask_source=source.kind,
        masks=str(source.root) if source.kind == "predictions" else None,
        transforms=str(transforms) if transforms is not None else None,
        skipped=[list(s) for s in result.skipped],
    )
    return result
