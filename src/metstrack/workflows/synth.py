"""Synthetic cohorts on disk: the release layout with ground truth beside it.

The pure parts live in :mod:`metstrack.synth` (patients rendered in memory by
:func:`metstrack.synth.cohort.make_patient`, tables built by
:func:`metstrack.synth.clinical.build_tables`); this workflow writes them:

* :func:`generate_cohort`: an imaging cohort (``imaging/``, ``tables/``, ``ground_truth/``),
* :func:`write_clinical_only`: a clinical-only cohort (``tables/``, ``ground_truth/``).

Both build in a staging folder beside the target (:func:`prepare_output`) and
move it into place when complete (:func:`publish_output`), so an interrupted
run never leaves a half-written cohort.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.config import save_config
from metstrack.core import schema
from metstrack.core.atomic import (
    staging_prefix,
    sweep_stale_staging,
    write_csv_atomic,
    write_json_atomic,
)
from metstrack.errors import DatasetError
from metstrack.io.nifti import write_volume
from metstrack.synth.clinical import (
    GT_BURDEN,
    GT_CONFIG,
    GT_INSTANCES,
    GT_PATIENTS,
    GT_SURVIVAL,
    GT_TARGETS,
    GT_TRAJECTORIES,
    GT_TRANSFORMS,
    GT_VESSELS,
    ClinicalCohort,
    CohortTables,
    PatientRecord,
    assign_splits,
    build_tables,
    patient_id,
)
from metstrack.synth.cohort import iter_studies, plan_patient
from metstrack.synth.config import SynthConfig
from metstrack.synth.timeline import Timeline
from metstrack.types import LABEL_SEQUENCE, MODALITIES, PLANNING_SEQUENCE

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _Written:
    record_volume: np.ndarray
    centroids: np.ndarray
    transforms: np.ndarray
    labelled: np.ndarray
    timeline: Timeline
    vessels: pd.DataFrame


def _write_patient(cfg: SynthConfig, index: int, out: Path) -> _Written:
    """Render and write one patient's studies; return what the tables need."""
    plan = plan_patient(cfg, index)
    tl = plan.timeline
    n_w = tl.n_written
    vols = np.zeros((tl.n_lesions, n_w))
    cents = np.zeros((tl.n_lesions, n_w, 3))
    for j, st in enumerate(iter_studies(plan)):
        folder = schema.study_dir(out, plan.patient_id, st.study_id)
        aff = st.affine
        images = np.clip(np.rint(st.images), 0, 32767).astype(np.int16)
        for c, m in enumerate(MODALITIES):
            write_volume(images[c], folder / f"{m}.nii.gz", affine=aff)
        if st.planning:
            write_volume(images[1], folder / f"{PLANNING_SEQUENCE}.nii.gz", affine=aff)
        if st.labelled:  # the release file only where the imaging table flags it
            write_volume(st.label, folder / f"{LABEL_SEQUENCE}.nii.gz", affine=aff)
        truth = schema.truth_label_path(out, plan.patient_id, st.study_id)
        write_volume(st.label, truth, affine=aff)
        gt = out / schema.GROUND_TRUTH_DIR / GT_INSTANCES / plan.patient_id
        write_volume(st.instances, gt / f"{st.study_id}.nii.gz", affine=aff)
        vols[:, j] = st.lesion_volume_mm3
        t = st.baseline_to_study
        cents[:, j] = plan.geometry.centres_mm @ t[:3, :3].T + t[:3, 3]
    g = plan.geometry
    vessels = pd.DataFrame(
        {
            "PatientID": plan.patient_id,
            "vessel_id": np.arange(1, len(g.vessel_radius_mm) + 1),
            "kind": np.where(
                np.linalg.norm(g.vessel_end_mm - g.vessel_start_mm, axis=1) > 0, "tube", "dot"
            ),
            "start_x_mm": g.vessel_start_mm[:, 0],
            "start_y_mm": g.vessel_start_mm[:, 1],
            "start_z_mm": g.vessel_start_mm[:, 2],
            "end_x_mm": g.vessel_end_mm[:, 0],
            "end_y_mm": g.vessel_end_mm[:, 1],
            "end_z_mm": g.vessel_end_mm[:, 2],
            "radius_mm": g.vessel_radius_mm,
        }
    )
    return _Written(
        record_volume=vols,
        centroids=cents,
        transforms=plan.transforms,
        labelled=plan.labelled,
        timeline=tl,
        vessels=vessels,
    )


#: Entries a folder may hold for ``overwrite=True`` to replace it.
_COHORT_ENTRIES = {schema.IMAGING_DIR, schema.TABLES_DIR, schema.GROUND_TRUTH_DIR}


def prepare_output(out_dir: str | Path, *, overwrite: bool) -> Path:
    """Check that ``out_dir`` may receive a cohort; return a fresh staging folder beside it.

    ``out_dir`` may be missing, empty, or a previous *synthetic* cohort (it has
    ``ground_truth/config.json``), which is replaced, so re-running a command is
    harmless. Any other cohort-like folder (a real release) is replaced only with
    ``overwrite``; a folder holding anything else is never touched. The cohort is
    built in the staging folder and moved into place by :func:`publish_output`, so
    an interrupted run never leaves a half-written cohort.

    Raises:
        DatasetError: ``out_dir`` is not a folder, holds files that are not part
            of a cohort, or holds a non-synthetic cohort and ``overwrite`` is false.
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"{out}: exists and is not a folder; choose another --out")
        entries = {p.name for p in out.iterdir()}
        foreign = sorted(entries - _COHORT_ENTRIES)
        if foreign:
            raise DatasetError(
                f"{out}: holds files that are not part of a cohort ({', '.join(foreign[:3])}); "
                "refusing to replace it, choose a new --out"
            )
        synthetic = (out / schema.GROUND_TRUTH_DIR / GT_CONFIG).is_file()
        if entries and not (synthetic or overwrite):
            raise DatasetError(
                f"{out}: holds a dataset that metstrack synth did not write; "
                "choose a new --out or pass --overwrite to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(out.parent, out.name)  # left by a killed run
    return Path(tempfile.mkdtemp(prefix=staging_prefix(out.name), dir=out.parent))


def publish_output(staging: Path, out_dir: str | Path) -> Path:
    """Move a finished staging folder onto ``out_dir`` (replacing a previous cohort)."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def generate_cohort(
    cfg: SynthConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    on_patient: Callable[[str], None] | None = None,
) -> Path:
    """Generate an imaging cohort in the release layout with ground truth beside it.

    Args:
        cfg: Settings; ``cfg.workers > 1`` renders patients in parallel processes
            (the output is identical for any number of workers).
        out_dir: Output folder: missing, empty, or a previous synthetic cohort
            (replaced); see :func:`prepare_output`. The cohort is built in a
            staging folder beside it and moved into place when complete.
        overwrite: Also replace a non-synthetic cohort (a release layout) there.
        on_patient: Called with each PatientID when its files are written (progress).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DatasetError: ``out_dir`` may not be replaced (see :func:`prepare_output`).
    """
    staging = prepare_output(out_dir, overwrite=overwrite)
    try:
        _generate_into(cfg, staging, on_patient)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_output(staging, out_dir)


def _generate_into(cfg: SynthConfig, out: Path, on_patient: Callable[[str], None] | None) -> None:
    splits = assign_splits(cfg.n_patients, cfg.seed, cfg.split_fractions)
    results: list[_Written | None] = [None] * cfg.n_patients
    if cfg.workers > 1 and cfg.n_patients > 1:
        workers = min(cfg.workers, cfg.n_patients, os.cpu_count() or 1)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_write_patient, cfg, i, out): i for i in range(cfg.n_patients)}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_patient:
                    on_patient(patient_id(i))
    else:
        for i in range(cfg.n_patients):
            results[i] = _write_patient(cfg, i, out)
            if on_patient:
                on_patient(patient_id(i))
    written = [r for r in results if r is not None]
    records = [
        PatientRecord(
            timeline=w.timeline,
            split=splits[i],
            volume_mm3=w.record_volume,
            labelled=w.labelled,
            has_images=True,
            centroids_mm=w.centroids,
            transforms=w.transforms,
        )
        for i, w in enumerate(written)
    ]
    tables = build_tables(records, cfg)
    write_tables(tables, out, cfg, mode="imaging")
    write_csv_atomic(
        out / schema.GROUND_TRUTH_DIR / GT_VESSELS,
        pd.concat([w.vessels for w in written], ignore_index=True),
        float_format="%.6f",
    )
    log.info("synthetic cohort: %d patients, %d studies", len(written), len(tables.imaging))


def write_tables(tables: CohortTables, root: str | Path, cfg: SynthConfig, **extra) -> None:
    """Write the release tables under ``root/tables`` and the ground truth under
    ``root/ground_truth`` (every file atomically)."""
    root = Path(root)
    write_csv_atomic(schema.table_path(root, schema.IMAGING_TABLE), tables.imaging)
    write_csv_atomic(schema.table_path(root, schema.SPLIT_TABLE), tables.split)
    write_csv_atomic(schema.table_path(root, schema.EVENTS_TABLE), tables.events)
    write_csv_atomic(schema.table_path(root, schema.PATIENTS_TABLE), tables.patients)
    write_csv_atomic(schema.table_path(root, schema.TARGETS_TABLE), tables.targets)
    gt = root / schema.GROUND_TRUTH_DIR
    write_csv_atomic(gt / GT_TRAJECTORIES, tables.trajectories, float_format="%.6f")
    write_csv_atomic(gt / GT_BURDEN, tables.burden, float_format="%.6f")
    write_csv_atomic(gt / GT_PATIENTS, tables.patient_truth, float_format="%.9g")
    write_csv_atomic(gt / GT_TARGETS, tables.target_lesions)
    if tables.transforms is not None:
        write_csv_atomic(gt / GT_TRANSFORMS, tables.transforms, float_format="%.9g")
    write_json_atomic(gt / GT_SURVIVAL, tables.survival_truth)
    save_config(cfg, gt / GT_CONFIG, **extra)


def write_clinical_only(
    cohort: ClinicalCohort, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write a clinical-only cohort: ``tables/`` and ``ground_truth/`` (no ``imaging/``).

    The imaging table lists every study with all sequence flags 0 (no files).
    ``out_dir`` follows the rules of :func:`prepare_output`
    (a previous synthetic cohort is replaced); files appear all at once.
    """
    staging = prepare_output(out_dir, overwrite=overwrite)
    try:
        write_tables(cohort.tables, staging, cohort.config, mode="clinical-only")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_output(staging, out_dir)
