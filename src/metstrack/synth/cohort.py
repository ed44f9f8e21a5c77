"""Imaging cohorts: in-memory patients (:func:`make_patient`) and the release layout on disk
(:func:`generate_cohort`).

Every patient has an isotropic baseline grid (RAS, origin at the grid centre)
on which each study is rendered; a follow-up's content is rigidly moved: anatomy
at baseline world point ``p`` appears at ``baseline_to_study @ p`` (the
convention of :mod:`metstrack.core.spatial`). Each study is then acquired
on its own grid (:mod:`metstrack.synth.acquisition`: voxel size, thick oblique
slices, scanner scale, skull on or stripped); ``acquisition = "fixed"`` keeps
every study on the baseline grid.

Layout written by :func:`generate_cohort`::

    <out>/imaging/patientId/<P>/studyId/<S>/{T1,CT1,T2,FLAIR}.nii.gz
        (+ RTSTRUCT_MRI.nii.gz for radiosurgery-planning studies,
         + RTSTRUCT_segmentation.nii.gz for the studies the release flags labelled)
    <out>/tables/{imaging,split,clinical_events,clinical_patients,radiosurgery_targets}.csv
    <out>/ground_truth/labels/<P>/<S>.nii.gz        uint8 lesion mask of every study
    <out>/ground_truth/instances/<P>/<S>.nii.gz     int16 lesion IDs, same ID across studies
    <out>/ground_truth/{transforms,lesion_trajectories,burden,patient_truth,vessels}.csv
    <out>/ground_truth/{survival_truth,config}.json

Every study's label (``instances > 0``) is in the ground truth; the release file
``RTSTRUCT_segmentation`` exists exactly where the imaging table flags it (the
studies the ``labelled`` policy releases, default: radiosurgery planning
studies), so the cohort validates clean. Training with ``use_all_labels`` and
evaluation read the hidden labels from the ground truth
(:attr:`metstrack.types.Study.any_label_path`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.core.atomic import staging_prefix, sweep_stale_staging, write_csv_atomic
from metstrack.errors import DatasetError
from metstrack.io import schema
from metstrack.io.nifti import write_volume
from metstrack.synth.acquisition import Acquisition, acquire, draw_acquisition
from metstrack.synth.anatomy import Anatomy, build_phantom
from metstrack.synth.clinical import (
    GT_CONFIG,
    GT_INSTANCES,
    GT_VESSELS,
    PatientRecord,
    assign_splits,
    build_tables,
    labelled_flags,
    patient_id,
    patient_streams,
    study_id,
    write_tables,
)
from metstrack.synth.config import SynthConfig
from metstrack.synth.contrast import draw_appearance, draw_table
from metstrack.synth.head import build_template_anatomy
from metstrack.synth.render import (
    BakedAnatomy,
    Geometry,
    bake_vessels,
    place_geometry,
    random_motion,
    render_study,
)
from metstrack.synth.timeline import Timeline, simulate_timeline
from metstrack.types import LABEL_SEQUENCE, MODALITIES, PLANNING_SEQUENCE

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SynthStudy:
    """One rendered study.

    Attributes:
        study_id: Release StudyID.
        days_from_baseline: Days since the patient's first scan.
        affine: float64 (4, 4) voxel-to-world of this study's own grid.
        images: float32 (4, X, Y, Z) T1, CT1, T2, FLAIR (T1 white matter ~1000
            times the study's scanner scale).
        instances: int16 (X, Y, Z) lesion IDs shared across the patient's studies.
        vessel_mask: bool (X, Y, Z) enhancing vessel voxels (never labelled).
        brain_mask: bool (X, Y, Z) brain envelope (what skull stripping keeps).
        baseline_to_study: float64 (4, 4) rigid world transform (identity at baseline).
        planning: A radiosurgery-planning study.
        labelled: The release flags its label.
        lesion_volume_mm3: float64 (n_lesions,) volume of each lesion on this grid.
        acquisition: The study's grid and scanner settings.
    """

    study_id: str
    days_from_baseline: int
    affine: np.ndarray
    images: np.ndarray
    instances: np.ndarray
    vessel_mask: np.ndarray
    brain_mask: np.ndarray
    baseline_to_study: np.ndarray
    planning: bool
    labelled: bool
    lesion_volume_mm3: np.ndarray
    acquisition: Acquisition

    def image(self, modality: str) -> np.ndarray:
        """The float32 (X, Y, Z) image of ``modality`` (one of T1, CT1, T2, FLAIR)."""
        return self.images[MODALITIES.index(modality)]

    @property
    def label(self) -> np.ndarray:
        """Binary uint8 (X, Y, Z) lesion mask (``instances > 0``)."""
        return (self.instances > 0).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class SynthPatient:
    """One synthetic patient in memory.

    Attributes:
        patient_id: Release PatientID.
        affine: float64 (4, 4) voxel-to-world (RAS+, mm) of the baseline grid (each
            study has its own grid: ``SynthStudy.affine``).
        studies: Studies in time order.
        timeline: Clinical course, planned volumes and survival.
        geometry: Lesion and vessel positions in baseline world coordinates.
        tissues: uint8 (X, Y, Z) baseline tissue codes (see
            :mod:`metstrack.synth.anatomy`: 0 background ... 6 white matter, 8 ventricle).
    """

    patient_id: str
    affine: np.ndarray
    studies: tuple[SynthStudy, ...]
    timeline: Timeline
    geometry: Geometry
    tissues: np.ndarray


@dataclass(frozen=True, eq=False)
class _Plan:
    patient_id: str
    timeline: Timeline
    anatomy: Anatomy
    baked: BakedAnatomy
    geometry: Geometry
    transforms: np.ndarray  # (n_written, 4, 4)
    labelled: np.ndarray  # (n_written,)
    study_seeds: tuple[np.random.SeedSequence, ...]
    acquisitions: tuple[Acquisition, ...]
    contrast: str


def _plan(cfg: SynthConfig, index: int, *, n_studies: int | None = None) -> _Plan:
    clin_ss, img_ss, flag_ss = patient_streams(cfg.seed, index)
    pid = patient_id(index)
    tl = simulate_timeline(
        clin_ss,
        pid,
        hazard_ratio=cfg.hazard_ratio,
        effects=cfg.covariates,
        min_studies=cfg.min_studies,
        max_studies=cfg.max_studies,
        interval_months=cfg.follow_up_interval_months,
        max_lesions=cfg.max_lesions,
        small_lesion_fraction=cfg.small_lesion_fraction,
        volume_scale=cfg.volume_scale,
        n_studies=n_studies,
    )
    anat_ss, geo_ss, motion_ss, study_ss, acq_ss, table_ss = img_ss.spawn(6)
    table_rng = np.random.default_rng(table_ss)
    contrast = cfg.contrast
    if contrast == "mixed":
        contrast = "randomized" if table_rng.random() < 0.5 else "clinical"
    table = draw_table(table_rng, contrast)
    anat_rng = np.random.default_rng(anat_ss)
    if cfg.anatomy == "template":
        anatomy = build_template_anatomy(anat_rng, cfg.shape, cfg.spacing_mm, table)
    else:
        anatomy = build_phantom(anat_rng, cfg.shape, cfg.spacing_mm, table)
    max_vol = tl.written_volumes_mm3.max(axis=1) if tl.n_lesions else np.zeros(0)
    geometry = place_geometry(
        np.random.default_rng(geo_ss), anatomy, max_vol, vessels=cfg.vessel_bait
    )
    acq_rng = np.random.default_rng(acq_ss)
    stripped = cfg.skull == "stripped" or (cfg.skull == "mixed" and acq_rng.random() < 0.5)
    shape3 = anatomy.labels.shape
    acquisitions = tuple(
        draw_acquisition(
            acq_rng,
            anatomy.affine,
            shape3,
            mode=cfg.acquisition,
            baseline=j == 0,
            head_scale=anatomy.head_scale,
            skull_stripped=stripped,
        )
        for j in range(tl.n_written)
    )
    motion_rng = np.random.default_rng(motion_ss)
    transforms = np.stack(
        [np.eye(4)]
        + [
            random_motion(motion_rng, cfg.motion_max_deg, cfg.motion_max_mm)
            for _ in range(tl.n_written - 1)
        ]
    )
    return _Plan(
        patient_id=pid,
        timeline=tl,
        anatomy=anatomy,
        baked=bake_vessels(anatomy, geometry),
        geometry=geometry,
        transforms=transforms,
        labelled=labelled_flags(tl, cfg.labelled_fraction(), flag_ss),
        study_seeds=tuple(study_ss.spawn(tl.n_written)),
        acquisitions=acquisitions,
        contrast=contrast,
    )


def _render(plan: _Plan, j: int) -> SynthStudy:
    tl = plan.timeline
    render_ss, look_ss = plan.study_seeds[j].spawn(2)
    r = render_study(
        plan.baked,
        plan.geometry,
        tl.lesion_volume_mm3[:, j],
        plan.transforms[j],
        np.random.default_rng(render_ss),
        draw_appearance(np.random.default_rng(look_ss), plan.contrast),
    )
    acq = plan.acquisitions[j]
    a = acquire(
        r.images,
        r.instances,
        r.vessel_mask,
        r.brain_mask,
        plan.anatomy.affine,
        acq,
        tl.n_lesions,
    )
    return SynthStudy(
        study_id=study_id(plan.patient_id, j),
        days_from_baseline=int(tl.study_days[j]),
        affine=acq.affine,
        images=a.images,
        instances=a.instances,
        vessel_mask=a.vessel_mask,
        brain_mask=a.brain_mask,
        baseline_to_study=plan.transforms[j],
        planning=bool(tl.srs_at_study[j]),
        labelled=bool(plan.labelled[j]),
        lesion_volume_mm3=a.lesion_volume_mm3,
        acquisition=acq,
    )


def _iter_studies(plan: _Plan) -> Iterator[SynthStudy]:
    for j in range(plan.timeline.n_written):
        yield _render(plan, j)


def make_patient(
    seed: int = 0,
    shape: int = 48,
    n_studies: int | None = 3,
    *,
    config: SynthConfig | None = None,
    index: int = 0,
) -> SynthPatient:
    """Generate one patient in memory (no disk I/O).

    Args:
        seed: Master seed (as in a cohort; the patient is the ``index``-th of it).
        shape: Grid edge K (K^3 voxels).
        n_studies: Exactly this many studies (the survival time is then not
            drawn from the Cox model), or ``None`` for the cohort's schedule.
        config: Other settings (``seed`` and ``shape`` are replaced by the arguments).
        index: Patient index within the cohort.

    Returns:
        A :class:`SynthPatient` whose arrays equal those :func:`generate_cohort`
        writes for the same seed, shape, index and ``n_studies=None``.
    """
    cfg = replace(config or SynthConfig(), seed=seed, shape=shape)
    plan = _plan(cfg, index, n_studies=n_studies)
    return SynthPatient(
        patient_id=plan.patient_id,
        affine=plan.anatomy.affine.copy(),
        studies=tuple(_iter_studies(plan)),
        timeline=plan.timeline,
        geometry=plan.geometry,
        tissues=plan.anatomy.labels,
    )


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
    plan = _plan(cfg, index)
    tl = plan.timeline
    n_w = tl.n_written
    vols = np.zeros((tl.n_lesions, n_w))
    cents = np.zeros((tl.n_lesions, n_w, 3))
    for j, st in enumerate(_iter_studies(plan)):
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
            from concurrent.futures import as_completed

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
