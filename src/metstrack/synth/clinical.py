"""Clinical tables and burden trajectories, and the clinical-only cohort mode.

The imaging cohort and :func:`generate_clinical_only` build their tables with
the same :func:`build_tables` from the same :class:`~metstrack.synth.timeline.Timeline`
records, so the survival model is identical in both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metstrack.core import schema
from metstrack.synth.config import SynthConfig
from metstrack.synth.timeline import HISTOLOGIES, Timeline, simulate_timeline
from metstrack.types import DAYS_PER_MONTH, MODALITIES

log = logging.getLogger(__name__)

#: Ground-truth file names (under ``<root>/ground_truth``).
GT_INSTANCES = "instances"
GT_TRANSFORMS = "transforms.csv"
GT_TRAJECTORIES = "lesion_trajectories.csv"
GT_BURDEN = "burden.csv"
GT_SURVIVAL = "survival_truth.json"
GT_PATIENTS = "patient_truth.csv"
GT_VESSELS = "vessels.csv"
GT_TARGETS = "target_lesions.csv"
GT_CONFIG = "config.json"

#: Seed-sequence spawn key reserved for the split permutation.
_SPLIT_KEY = 2**31 - 1


def patient_id(index: int) -> str:
    """PatientID of the ``index``-th (0-based) synthetic patient."""
    return f"P{index + 1:05d}"


def study_id(pid: str, j: int) -> str:
    """StudyID of the ``j``-th (0-based) study of patient ``pid`` (unique in the cohort)."""
    return f"{pid}_S{j + 1:02d}"


def patient_streams(
    seed: int, index: int
) -> tuple[np.random.SeedSequence, np.random.SeedSequence, np.random.SeedSequence]:
    """Independent seed sequences (clinical, images, label flags) of patient ``index``.

    They are the three children of ``SeedSequence(seed).spawn(n)[index]``, so a
    patient's data depend only on the master seed and its index.
    """
    parent = np.random.SeedSequence(seed, spawn_key=(index,))
    clinical, images, flags = parent.spawn(3)
    return clinical, images, flags


def assign_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> list[str]:
    """Split patients into train/val/test by a seeded permutation (exact counts).

    Returns:
        One of ``"train"``, ``"val"``, ``"test"`` per patient index.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_KEY,)))
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    order = rng.permutation(n)
    out = ["train"] * n
    for k in order[:n_val]:
        out[k] = "val"
    for k in order[n_val : n_val + n_test]:
        out[k] = "test"
    return out


def dose_gy(volume_mm3: float) -> float:
    """Single-fraction radiosurgery dose by target diameter (RTOG 90-05 style)."""
    diameter_mm = 2 * float(np.cbrt(3 * volume_mm3 / (4 * math.pi)))
    if diameter_mm <= 20:
        return 24.0 if diameter_mm > 5 else 20.0
    if diameter_mm <= 30:
        return 18.0
    return 15.0


@dataclass(frozen=True, eq=False)
class PatientRecord:
    """What the tables need of one patient besides its timeline.

    Attributes:
        timeline: The clinical course.
        split: ``"train"``, ``"val"`` or ``"test"``.
        volume_mm3: float64 (n_lesions, n_written) lesion volumes as written
            (rendered voxel volumes for imaging cohorts, planned for clinical-only).
        labelled: bool (n_written,) the release flags the study's label.
        has_images: Image files exist for the patient's studies.
        centroids_mm: float64 (n_lesions, n_written, 3) lesion centres in each
            study's world space, or ``None`` (clinical-only).
        transforms: float64 (n_written, 4, 4) ``baseline_to_study``, or ``None``.
    """

    timeline: Timeline
    split: str
    volume_mm3: np.ndarray
    labelled: np.ndarray
    has_images: bool
    centroids_mm: np.ndarray | None = None
    transforms: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class CohortTables:
    """Every table of a synthetic cohort (release tables and ground truth).

    Attributes:
        imaging, split, events, patients, targets: Release tables (schema columns).
        trajectories, burden, patient_truth, transforms: Ground-truth tables.
        target_lesions: Ground truth: the lesion ID of each radiosurgery target.
        survival_truth: The planted model (JSON-ready).
    """

    imaging: pd.DataFrame
    split: pd.DataFrame
    events: pd.DataFrame
    patients: pd.DataFrame
    targets: pd.DataFrame
    trajectories: pd.DataFrame
    burden: pd.DataFrame
    patient_truth: pd.DataFrame
    transforms: pd.DataFrame | None
    survival_truth: dict
    target_lesions: pd.DataFrame


def survival_truth(cfg: SynthConfig) -> dict:
    """The planted Cox model as a JSON-ready dict (coefficients are natural-log hazard ratios)."""
    effects = cfg.covariates
    hist = effects.histology_hr
    coefs = {
        "rate_cm3_per_month": math.log(cfg.hazard_ratio),
        "age_per_decade": math.log(effects.hr_age_per_decade),
        "kps_per_10_points": math.log(effects.hr_kps_per_10),
        "extracranial_disease": math.log(effects.hr_extracranial),
    }
    for h in HISTOLOGIES[1:]:
        coefs[f"histology_{h}"] = math.log(hist[h])
    return {
        "model": "Cox proportional hazards, Weibull baseline hazard",
        "time_origin": "first radiosurgery (clinical_patients.days_to_death_or_followup)",
        "event": "clinical_patients.death",
        "coefficients": coefs,
        "hazard_ratios": {k: math.exp(v) for k, v in coefs.items()},
        "covariates": {
            "rate_cm3_per_month": (
                "least-squares slope of the patient's total metastasis volume (cm3) against "
                "time in months (days_from_baseline / 30.4375) over the patient's studies; "
                "total volume is exactly linear in time, so every subset of two or more "
                "studies gives the same slope (ground_truth/burden.csv; for imaging cohorts "
                "the voxel-counted labels match it up to voxelisation)"
            ),
            "age_per_decade": "(age_years - 60) / 10",
            "kps_per_10_points": "(kps - 80) / 10",
            "extracranial_disease": "1 if extracranial_disease else 0",
            "histology_*": "indicator of primary_histology; lung is the reference",
        },
        "units": {"time": "days", "rate": "cm3/month", "days_per_month": DAYS_PER_MONTH},
        "baseline": {
            "weibull_shape": effects.weibull_shape,
            "median_survival_months_at_zero_log_hazard": effects.median_survival_months,
        },
        "censoring": {
            "kind": "independent administrative censoring, uniform in months",
            "range_months": list(effects.admin_censoring_months),
        },
        "study_selection": (
            "min_studies scans happen at or before the first radiosurgery (time zero); later "
            "scans are written only while the patient is alive and followed"
        ),
    }


def _imaging_rows(rec: PatientRecord) -> list[dict]:
    """Imaging-table rows of one patient (sequence flags 0 without images)."""
    tl, rows = rec.timeline, []
    for j in range(tl.n_written):
        planning = bool(tl.srs_at_study[j])
        rows.append(
            {
                "PatientID": tl.patient_id,
                "StudyID": study_id(tl.patient_id, j),
                **{m: int(rec.has_images) for m in MODALITIES},
                "RTSTRUCT_segmentation": int(rec.has_images and rec.labelled[j]),
                "RTSTRUCT_MRI": int(rec.has_images and planning),
                "ExpertAdjusted": int(rec.has_images and rec.labelled[j] and planning),
                "DaysFromBaselineScan": int(tl.written_days[j]),
                "RelativeTimepoint": j + 1,
            }
        )
    return rows


def _split_rows(rec: PatientRecord) -> list[dict]:
    """Split-table rows of one patient (every study in the patient's split)."""
    tl = rec.timeline
    return [
        {
            "StudyID": study_id(tl.patient_id, j),
            "train": int(rec.split == "train"),
            "val": int(rec.split == "val"),
            "test": int(rec.split == "test"),
        }
        for j in range(tl.n_written)
    ]


def _event(pid: str, visit_class: int, day: float, sid: str | None, description: str) -> dict:
    return {
        "PatientID": pid,
        "visit_class": visit_class,
        "days_from_first_srs": int(day),
        "StudyID": sid,
        "description": description,
    }


def _event_rows(rec: PatientRecord) -> list[dict]:
    """Clinical events of one patient: scans, radiosurgery, medications, visits, death."""
    tl = rec.timeline
    pid, days = tl.patient_id, tl.written_days
    rows = []
    for j in range(tl.n_written):
        sid = study_id(pid, j)
        day = days[j] - tl.srs_day
        rows.append(_event(pid, 3, day, sid, "MRI brain with and without contrast"))
        if tl.srs_at_study[j]:
            n = np.flatnonzero(tl.lesion_treated_at == j).size
            rows.append(_event(pid, 2, day, sid, f"stereotactic radiosurgery, {n} target(s)"))
    rows += [
        _event(pid, 1, d, None, name)
        for d, name in tl.medications
        if d < tl.days_to_death_or_followup
    ]
    rows += [_event(pid, 4, d, None, "clinic follow-up") for d in tl.followup_days_from_srs]
    last = ("death", 5) if tl.death else ("last follow-up", 4)
    rows.append(_event(pid, last[1], tl.days_to_death_or_followup, None, last[0]))
    return rows


def _target_rows(rec: PatientRecord) -> list[dict]:
    """Radiosurgery targets of one patient (lesions too small to render are not contoured)."""
    tl = rec.timeline
    pid, days = tl.patient_id, tl.written_days
    rows = []
    for j in range(tl.n_written):
        if not tl.srs_at_study[j]:
            continue
        vols = rec.volume_mm3[:, j]
        for lid in np.flatnonzero(tl.lesion_treated_at == j):
            if vols[lid] <= 0:  # too small to render on this grid: not contoured
                continue
            c = rec.centroids_mm[lid, j] if rec.centroids_mm is not None else np.full(3, np.nan)
            rows.append(
                {
                    "PatientID": pid,
                    "target_id": 0,  # numbered in _target_tables
                    "StudyID": study_id(pid, j),
                    "days_from_first_srs": int(days[j] - tl.srs_day),
                    "target_volume_mm3": round(float(vols[lid]), 3),
                    "dose_gy": dose_gy(float(vols[lid])),
                    "centroid_x_mm": round(float(c[0]), 3),
                    "centroid_y_mm": round(float(c[1]), 3),
                    "centroid_z_mm": round(float(c[2]), 3),
                    "_lesion_id": int(lid) + 1,
                }
            )
    return rows


def _trajectory_rows(rec: PatientRecord) -> list[dict]:
    """Ground-truth lesion trajectories: one row per lesion and written study."""
    tl = rec.timeline
    treated = tl.treated_mask()
    return [
        {
            "PatientID": tl.patient_id,
            "lesion_id": lid + 1,
            "StudyID": study_id(tl.patient_id, j),
            "days_from_baseline": int(tl.written_days[j]),
            "volume_mm3": float(rec.volume_mm3[lid, j]),
            "planned_volume_mm3": float(tl.lesion_volume_mm3[lid, j]),
            "treated": int(treated[lid, j]),
            "kind": tl.lesion_kind[lid],
        }
        for j in range(tl.n_written)
        for lid in range(tl.n_lesions)
    ]


def _burden_rows(rec: PatientRecord) -> list[dict]:
    """Ground-truth burden: total volume and lesion count per written study."""
    tl = rec.timeline
    rows = []
    for j in range(tl.n_written):
        vols = rec.volume_mm3[:, j]
        rows.append(
            {
                "PatientID": tl.patient_id,
                "StudyID": study_id(tl.patient_id, j),
                "days_from_baseline": int(tl.written_days[j]),
                "total_volume_mm3": float(vols.sum()),
                "lesion_count": int(np.count_nonzero(vols > 0)),
            }
        )
    return rows


def _transform_rows(rec: PatientRecord) -> list[dict]:
    """True ``baseline_to_study`` matrices (m00..m33), rotation angle and translation."""
    if rec.transforms is None:
        return []
    tl, rows = rec.timeline, []
    for j in range(tl.n_written):
        m = rec.transforms[j]
        row: dict = {"PatientID": tl.patient_id, "StudyID": study_id(tl.patient_id, j)}
        for a in range(4):
            for b in range(4):
                row[f"m{a}{b}"] = float(m[a, b])
        cos = np.clip((np.trace(m[:3, :3]) - 1) / 2, -1, 1)
        row["angle_deg"] = float(np.degrees(np.arccos(cos)))
        row["translation_mm"] = float(np.linalg.norm(m[:3, 3]))
        rows.append(row)
    return rows


def _patient_row(rec: PatientRecord) -> dict:
    """The clinical-patients row (demographics, outcome)."""
    tl = rec.timeline
    return {
        "PatientID": tl.patient_id,
        "age_years": tl.age_years,
        "sex": tl.sex,
        "primary_histology": tl.histology,
        "kps": tl.kps,
        "extracranial_disease": int(tl.extracranial_disease),
        "death": int(tl.death),
        "days_to_death_or_followup": int(tl.days_to_death_or_followup),
        "first_srs_days_from_baseline_scan": int(tl.srs_day),
    }


def _truth_row(rec: PatientRecord) -> dict:
    """The patient's planted survival truth (rate, linear predictor, event days)."""
    tl = rec.timeline
    return {
        "PatientID": tl.patient_id,
        "rate_cm3_per_month": tl.rate_cm3_per_month,
        "intercept_mm3": tl.intercept_mm3,
        "linear_predictor": tl.linear_predictor,
        "death_day_from_srs": tl.death_day_from_srs,
        "censor_day_from_srs": tl.censor_day_from_srs,
        "n_studies": tl.n_written,
        "n_lesions": tl.n_lesions,
        "forced_schedule": int(tl.forced),
    }


def _target_tables(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The release targets table and the ground-truth target -> lesion link."""
    targets = pd.DataFrame(rows, columns=[*schema.TARGET_COLUMNS, "lesion_id"])
    if rows:
        targets = pd.DataFrame(rows).rename(columns={"_lesion_id": "lesion_id"})
        targets["target_id"] = targets.groupby("PatientID").cumcount() + 1
    # The release table has no lesion identities; the link lives in the ground truth.
    target_lesions = targets[["PatientID", "target_id", "StudyID", "lesion_id"]].copy()
    return targets[list(schema.TARGET_COLUMNS)], target_lesions


def build_tables(records: list[PatientRecord], cfg: SynthConfig) -> CohortTables:
    """Build every table from per-patient records (shared by both cohort modes).

    Each table has its own row builder (``_imaging_rows``, ``_event_rows``,
    ``_target_rows``, ``_trajectory_rows``, ...), applied patient by patient.
    """

    def rows(fn) -> list[dict]:
        return [row for rec in records for row in fn(rec)]

    targets, target_lesions = _target_tables(rows(_target_rows))
    events = pd.DataFrame(rows(_event_rows), columns=list(schema.EVENT_COLUMNS))
    events = events.sort_values(
        ["PatientID", "days_from_first_srs", "visit_class"], kind="stable"
    ).reset_index(drop=True)
    tf = None
    if any(r.transforms is not None for r in records):
        tf = pd.DataFrame(rows(_transform_rows))
    return CohortTables(
        imaging=pd.DataFrame(rows(_imaging_rows), columns=list(schema.IMAGING_COLUMNS)),
        split=pd.DataFrame(rows(_split_rows), columns=list(schema.SPLIT_COLUMNS)),
        events=events,
        patients=pd.DataFrame(
            [_patient_row(r) for r in records], columns=list(schema.PATIENT_COLUMNS)
        ),
        targets=targets,
        trajectories=pd.DataFrame(rows(_trajectory_rows)),
        burden=pd.DataFrame(rows(_burden_rows)),
        patient_truth=pd.DataFrame([_truth_row(r) for r in records]),
        transforms=tf,
        survival_truth=survival_truth(cfg),
        target_lesions=target_lesions,
    )


@dataclass(frozen=True, eq=False)
class ClinicalCohort:
    """A clinical-only cohort: timelines and their tables (no images).

    Attributes:
        config: The resolved settings.
        timelines: One per patient, in PatientID order.
        tables: Release tables and ground truth (no transforms, NaN target centroids).
    """

    config: SynthConfig
    timelines: tuple[Timeline, ...]
    tables: CohortTables


def generate_clinical_only(
    n_patients: int = 1429, seed: int = 0, *, config: SynthConfig | None = None
) -> ClinicalCohort:
    """Clinical tables and burden trajectories for many patients, without images.

    Patient ``i`` gets exactly the timeline (covariates, schedule, planned
    volumes, survival) it would get in an imaging cohort with the same seed and
    a full-size (>= 192 mm) field of view.

    Args:
        n_patients: Number of patients (1,429 is the published NYUMets size).
        seed: Master seed.
        config: Other settings (``n_patients`` and ``seed`` of it are replaced).

    Returns:
        The :class:`ClinicalCohort`; write it with :func:`write_clinical_only`.
    """
    from dataclasses import replace

    cfg = replace(config or SynthConfig(), n_patients=n_patients, seed=seed)
    splits = assign_splits(n_patients, seed, cfg.split_fractions)
    frac = cfg.labelled_fraction()
    timelines, records = [], []
    for i in range(n_patients):
        clin_ss, _, flag_ss = patient_streams(seed, i)
        tl = simulate_timeline(
            clin_ss,
            patient_id(i),
            hazard_ratio=cfg.hazard_ratio,
            effects=cfg.covariates,
            min_studies=cfg.min_studies,
            max_studies=cfg.max_studies,
            interval_months=cfg.follow_up_interval_months,
            max_lesions=cfg.max_lesions,
            small_lesion_fraction=cfg.small_lesion_fraction,
            volume_scale=1.0,
        )
        timelines.append(tl)
        labelled = labelled_flags(tl, frac, flag_ss)
        records.append(
            PatientRecord(
                timeline=tl,
                split=splits[i],
                volume_mm3=tl.written_volumes_mm3,
                labelled=labelled,
                has_images=False,
            )
        )
    tables = build_tables(records, cfg)
    log.info("clinical-only cohort: %d patients, %d studies", n_patients, len(tables.imaging))
    return ClinicalCohort(config=cfg, timelines=tuple(timelines), tables=tables)


def labelled_flags(tl: Timeline, frac: float | None, ss: np.random.SeedSequence) -> np.ndarray:
    """Release label flags of the written studies under the labelled policy.

    Args:
        tl: The patient's timeline.
        frac: ``None`` for radiosurgery-planning studies only, else the chance
            that each study is flagged.
        ss: The patient's own flag stream (so the policy never changes other draws).
    """
    n_w = tl.n_written
    if frac is None:
        return tl.srs_at_study[:n_w].copy()
    return np.random.default_rng(ss).random(n_w) < frac


def summary(tables: CohortTables) -> dict[str, float]:
    """Headline numbers of a cohort (for the CLI summary)."""
    pats = tables.patients
    traj = tables.trajectories
    present = traj[traj["volume_mm3"] > 0]
    return {
        "patients": float(len(pats)),
        "studies": float(len(tables.imaging)),
        "labelled_studies": float(tables.imaging["RTSTRUCT_segmentation"].sum()),
        "lesions": float(len(traj.drop_duplicates(["PatientID", "lesion_id"]))),
        "small_lesion_fraction": float((present["volume_mm3"] < 10).mean()) if len(present) else 0,
        "deaths": float(pats["death"].sum()),
        "median_followup_days": float(pats["days_to_death_or_followup"].median()),
    }
