"""The on-disk schema of a dataset in the NYUMets-Brain release layout.

One place names every file and column, so the synthetic generator, the reader,
the validator and the analysis commands agree::

    <root>/
      imaging/patientId/<PatientID>/studyId/<StudyID>/<SEQ>.nii.gz
      tables/imaging.csv           IMAGING_COLUMNS, one row per study
      tables/split.csv             SPLIT_COLUMNS, one row per study (0/1 flags)
      tables/clinical_events.csv   EVENT_COLUMNS, one row per event
      tables/clinical_patients.csv PATIENT_COLUMNS, one row per patient
      tables/radiosurgery_targets.csv TARGET_COLUMNS, one row per target
      ground_truth/                only for synthetic cohorts (see metstrack.synth)
      ground_truth/labels/<PatientID>/<StudyID>.nii.gz
                                   every study's binary lesion mask, including the
                                   studies whose release label is flagged off

Days in the imaging table count from the patient's first scan
(``DaysFromBaselineScan``); days in the clinical tables count from the first
radiosurgery (``days_from_first_srs``). ``first_srs_days_from_baseline_scan``
in the patient table links the two clocks.
"""

from __future__ import annotations

from pathlib import Path

from metstrack.types import SEQUENCES

IMAGING_DIR = "imaging"
TABLES_DIR = "tables"
GROUND_TRUTH_DIR = "ground_truth"

IMAGING_TABLE = "imaging.csv"
SPLIT_TABLE = "split.csv"
EVENTS_TABLE = "clinical_events.csv"
PATIENTS_TABLE = "clinical_patients.csv"
TARGETS_TABLE = "radiosurgery_targets.csv"

IMAGING_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "StudyID",
    *SEQUENCES,
    "ExpertAdjusted",
    "DaysFromBaselineScan",
    "RelativeTimepoint",
)
SPLIT_COLUMNS: tuple[str, ...] = ("StudyID", "train", "val", "test")
EVENT_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "visit_class",
    "days_from_first_srs",
    "StudyID",
    "description",
)
PATIENT_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "age_years",
    "sex",
    "primary_histology",
    "kps",
    "extracranial_disease",
    "death",
    "days_to_death_or_followup",
    "first_srs_days_from_baseline_scan",
)
TARGET_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "target_id",
    "StudyID",
    "days_from_first_srs",
    "target_volume_mm3",
    "dose_gy",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)


#: Predictions mirror the imaging tree under their own root:
#: ``<pred>/predictions/patientId/<PatientID>/studyId/<StudyID>/{mask,prob}.nii.gz``
#: plus ``lesions.csv`` (one row per predicted lesion).
PREDICTIONS_DIR = "predictions"
PREDICTION_MASK = "mask"
PREDICTION_PROB = "prob"
PREDICTION_LESIONS = "lesions.csv"


def prediction_dir(pred_root: str | Path, patient_id: str, study_id: str) -> Path:
    """Folder of one study's predictions under a prediction root."""
    return Path(pred_root) / PREDICTIONS_DIR / "patientId" / patient_id / "studyId" / study_id


def study_dir(root: str | Path, patient_id: str, study_id: str) -> Path:
    """Folder of one study: ``root/imaging/patientId/<PatientID>/studyId/<StudyID>``."""
    return Path(root) / IMAGING_DIR / "patientId" / patient_id / "studyId" / study_id


#: Folder of every study's true binary lesion mask (synthetic cohorts and their
#: preprocessed copies): ``<root>/ground_truth/labels/<PatientID>/<StudyID>.nii.gz``.
#: The release ``RTSTRUCT_segmentation`` file exists only where the imaging table
#: flags it; the labels the release hides from training live here.
TRUTH_LABELS_DIR = "labels"


def truth_label_path(root: str | Path, patient_id: str, study_id: str) -> Path:
    """Where a study's ground-truth binary label is written (see :data:`TRUTH_LABELS_DIR`)."""
    return Path(root) / GROUND_TRUTH_DIR / TRUTH_LABELS_DIR / patient_id / f"{study_id}.nii.gz"


def table_path(root: str | Path, name: str) -> Path:
    """Path of table file ``name`` (one of the ``*_TABLE`` constants) under ``root/tables``."""
    return Path(root) / TABLES_DIR / name
