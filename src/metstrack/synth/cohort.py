"""Imaging cohorts: in-memory patients (:func:`make_patient`) and the release layout on disk
(:func:`metstrack.workflows.synth.generate_cohort`).

Every patient has an isotropic baseline grid (RAS, origin at the grid centre)
on which each study is rendered; a follow-up's content is rigidly moved: anatomy
at baseline world point ``p`` appears at ``baseline_to_study @ p`` (the
convention of :mod:`metstrack.core.spatial`). Each study is then acquired
on its own grid (:mod:`metstrack.synth.acquisition`: voxel size, thick oblique
slices, scanner scale, skull on or stripped); ``acquisition = "fixed"`` keeps
every study on the baseline grid.

Layout written by :func:`metstrack.workflows.synth.generate_cohort`::

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
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from metstrack.synth.acquisition import Acquisition, acquire, draw_acquisition
from metstrack.synth.anatomy import Anatomy, build_phantom
from metstrack.synth.clinical import labelled_flags, patient_id, patient_streams, study_id
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
from metstrack.types import MODALITIES

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
class PatientPlan:
    """Everything drawn for one patient before any study is rendered (seeded per patient)."""

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


def plan_patient(cfg: SynthConfig, index: int, *, n_studies: int | None = None) -> PatientPlan:
    """Draw patient ``index``'s timeline, anatomy, lesions, motion and acquisitions."""
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
    return PatientPlan(
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


def _render(plan: PatientPlan, j: int) -> SynthStudy:
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


def iter_studies(plan: PatientPlan) -> Iterator[SynthStudy]:
    """Render the planned patient's written studies one at a time, in time order."""
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
    plan = plan_patient(cfg, index, n_studies=n_studies)
    return SynthPatient(
        patient_id=plan.patient_id,
        affine=plan.anatomy.affine.copy(),
        studies=tuple(iter_studies(plan)),
        timeline=plan.timeline,
        geometry=plan.geometry,
        tissues=plan.anatomy.labels,
    )
