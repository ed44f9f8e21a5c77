"""Shared records and the geometry convention.

Geometry convention: arrays are indexed (X, Y, Z) and affines are 4x4 matrices
mapping voxel indices to world millimetres in RAS+ (nibabel's convention).
Conversions from other orders (DICOM LPS, SimpleITK's (Z, Y, X) arrays) happen
only at the I/O boundary.

Units live in field names: ``volume_mm3``, ``days_from_baseline``,
``spacing_mm``. Records are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from metstrack.core.affine import spacing_from_affine
from metstrack.errors import DatasetError, did_you_mean

#: The four MRI contrasts of a study, in the default channel order.
MODALITIES: tuple[str, ...] = ("T1", "CT1", "T2", "FLAIR")
#: File stem of the lesion mask in the release layout.
LABEL_SEQUENCE = "RTSTRUCT_segmentation"
#: File stem of the radiosurgery planning T1 post in the release layout.
PLANNING_SEQUENCE = "RTSTRUCT_MRI"
#: Every sequence column of the release imaging table.
SEQUENCES: tuple[str, ...] = (*MODALITIES, LABEL_SEQUENCE, PLANNING_SEQUENCE)

#: Tolerances used when comparing affines of images that must share a grid.
AFFINE_ATOL_MM = 1e-3


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image with its geometry.

    Attributes:
        array: Voxel values, shape (X, Y, Z), any numeric dtype.
        affine: float64 (4, 4) voxel-to-world (RAS+, mm) matrix.
        path: The file it came from, if any (used in error messages).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (X, Y, Z)."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing along X, Y, Z in mm (column norms of the affine)."""
        return spacing_from_affine(self.affine)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm3 (absolute determinant of the affine)."""
        return float(abs(np.linalg.det(np.asarray(self.affine)[:3, :3])))

    def with_array(self, array: np.ndarray) -> Volume:
        """Return a volume on the same grid holding ``array`` (same shape required)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from grid shape {self.shape}")
        return replace(self, array=array)

    def same_grid(self, other: Volume, *, atol_mm: float = AFFINE_ATOL_MM) -> bool:
        """True when ``other`` has the same shape and an affine equal within ``atol_mm``."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, atol=atol_mm, rtol=0)
        )

    def describe_grid(self) -> str:
        """One-line description of the grid for error messages."""
        sp = ", ".join(f"{s:.3g}" for s in self.spacing_mm)
        origin = ", ".join(f"{o:.3g}" for o in np.asarray(self.affine)[:3, 3])
        return (
            f"shape {self.shape}, spacing ({sp}) mm, origin ({origin}) mm, "
            f"axes {axis_codes(self.affine)}"
        )


def axis_codes(affine: np.ndarray) -> str:
    """Orientation codes of an affine's voxel axes, e.g. ``"RAS"`` or ``"LPS"`` (``"?"``
    for a degenerate affine)."""
    try:
        return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))
    except Exception:  # noqa: BLE001 - only decorates messages
        return "?"


@dataclass(frozen=True)
class Series:
    """One image of a study: a modality, the label, or the planning scan.

    Attributes:
        sequence: One of :data:`SEQUENCES`.
        path: The NIfTI file.
    """

    sequence: str
    path: Path


@dataclass(frozen=True)
class Study:
    """One MRI session of a patient.

    Attributes:
        study_id: Release StudyID.
        patient_id: Release PatientID.
        days_from_baseline: Days since the patient's first scan (0 for the first).
        relative_timepoint: 1-based rank of the study in the patient's timeline.
        series: Image files present on disk, one per sequence.
        sequences_flagged: Sequences the imaging table marks as available (1).
        labelled: The release flags a lesion label as available for this study.
        expert_adjusted: The label was adjusted by an expert (release flag).
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` when unsplit.
        truth_label: The ground-truth binary label of a synthetic cohort
            (``ground_truth/labels/<P>/<S>.nii.gz``), present also where the
            release hides the label, or ``None``.
    """

    study_id: str
    patient_id: str
    days_from_baseline: float
    relative_timepoint: int
    series: tuple[Series, ...] = ()
    sequences_flagged: tuple[str, ...] = ()
    labelled: bool = False
    expert_adjusted: bool = False
    split: str | None = None
    truth_label: Path | None = None

    def path(self, sequence: str) -> Path | None:
        """File of ``sequence`` in this study, or ``None`` when it is missing."""
        for s in self.series:
            if s.sequence == sequence:
                return s.path
        return None

    @property
    def label_path(self) -> Path | None:
        """The lesion mask file, or ``None``."""
        return self.path(LABEL_SEQUENCE)

    @property
    def any_label_path(self) -> Path | None:
        """The release label file, else the ground-truth label, else ``None``."""
        return self.label_path or self.truth_label

    @property
    def modalities_present(self) -> tuple[str, ...]:
        """The MRI contrasts with a file on disk, in :data:`MODALITIES` order."""
        have = {s.sequence for s in self.series}
        return tuple(m for m in MODALITIES if m in have)

    @property
    def months_from_baseline(self) -> float:
        """Days from baseline converted with 30.4375 days per month."""
        return self.days_from_baseline / DAYS_PER_MONTH


#: Average days in a month (365.25 / 12); used for every per-month rate.
DAYS_PER_MONTH = 30.4375


@dataclass(frozen=True)
class Patient:
    """One patient: studies in time order.

    Attributes:
        patient_id: Release PatientID.
        studies: Studies sorted by ``days_from_baseline``.
        split: The patient's split (every study shares it), or ``None``.
    """

    patient_id: str
    studies: tuple[Study, ...]
    split: str | None = None


@dataclass(frozen=True)
class ClinicalPatient:
    """One row of the per-patient clinical table.

    Attributes:
        patient_id: Release PatientID.
        age_years: Age at first radiosurgery.
        sex: ``"F"`` or ``"M"``.
        primary_histology: e.g. ``"lung"``, ``"breast"``, ``"melanoma"``.
        kps: Karnofsky performance status (0-100).
        extracranial_disease: Active extracranial disease at first radiosurgery.
        death: True when death was observed, False when censored.
        days_to_death_or_followup: Days from first radiosurgery to death or last follow-up.
        first_srs_days_from_baseline_scan: Days from the first scan to first radiosurgery.
    """

    patient_id: str
    age_years: float
    sex: str
    primary_histology: str
    kps: float
    extracranial_disease: bool
    death: bool
    days_to_death_or_followup: float
    first_srs_days_from_baseline_scan: float = 0.0


@dataclass(frozen=True)
class ClinicalEvent:
    """One row of the clinical event table.

    Attributes:
        patient_id: Release PatientID.
        visit_class: 1 medication, 2 radiosurgery, 3 image, 4 follow-up, 5 death.
        days_from_first_srs: Days from the patient's first radiosurgery (negative before).
        study_id: The StudyID for image events, else ``None``.
        description: Free text (drug name, treatment kind), never identifying.
    """

    patient_id: str
    visit_class: int
    days_from_first_srs: float
    study_id: str | None = None
    description: str = ""


#: visit_class codes of the clinical event table.
VISIT_CLASSES: dict[int, str] = {
    1: "medication",
    2: "radiosurgery",
    3: "image",
    4: "follow-up",
    5: "death",
}


@dataclass(frozen=True)
class RadiosurgeryTarget:
    """One row of the radiosurgery target table.

    Attributes:
        patient_id: Release PatientID.
        target_id: Target number within the patient.
        study_id: The planning study.
        days_from_first_srs: Treatment day relative to first radiosurgery.
        target_volume_mm3: Contoured target volume.
        dose_gy: Prescribed dose.
        centroid_mm: Target centroid in the planning study's world space (RAS, mm).
    """

    patient_id: str
    target_id: int
    study_id: str
    days_from_first_srs: float
    target_volume_mm3: float
    dose_gy: float
    centroid_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Lesion:
    """One connected component of a mask in one study.

    Attributes:
        label: Component label in the labelled array (1-based).
        voxel_count: Number of voxels.
        volume_mm3: ``voxel_count`` times the voxel volume.
        centroid_mm: Centroid in world coordinates (RAS, mm) through the affine.
        centroid_voxel: Centroid in voxel indices (X, Y, Z).
        longest_diameter_mm: Largest distance between two voxel centres, in mm.
        bbox: Bounding box as (x0, y0, z0, x1, y1, z1), half-open voxel indices.
    """

    label: int
    voxel_count: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    centroid_voxel: tuple[float, float, float]
    longest_diameter_mm: float
    bbox: tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Cohort:
    """A dataset read from disk: patients in order plus clinical tables.

    Attributes:
        root: Dataset folder.
        patients: Patients sorted by ID, each with studies in time order.
        clinical_patients: Per-patient clinical rows (may be empty).
        clinical_events: Event rows (may be empty).
        radiosurgery_targets: Target rows (may be empty).
        layout: Name of the reader that produced it (``"release"``, ``"brats-mets"``...).
        label_classes: Label values that form the lesion mask when the label
            files are multi-class (BraTS-METS: 1 necrotic core, 3 enhancing);
            empty when label files are binary. Load masks with
            :func:`metstrack.io.layouts.load_lesion_mask`, which applies it.
    """

    root: Path
    patients: tuple[Patient, ...]
    clinical_patients: tuple[ClinicalPatient, ...] = ()
    clinical_events: tuple[ClinicalEvent, ...] = ()
    radiosurgery_targets: tuple[RadiosurgeryTarget, ...] = ()
    layout: str = "release"
    extra: dict[str, str] = field(default_factory=dict)
    label_classes: tuple[int, ...] = ()

    def patient(self, patient_id: str) -> Patient:
        """Return the patient with ``patient_id`` or raise a DatasetError naming the cohort."""
        for p in self.patients:
            if p.patient_id == patient_id:
                return p
        raise DatasetError(
            f"{self.root}: unknown patient {patient_id!r}; "
            + did_you_mean(patient_id, [p.patient_id for p in self.patients][:50])
        )

    @property
    def studies(self) -> tuple[Study, ...]:
        """Every study of every patient, patients in order, studies in time order."""
        return tuple(s for p in self.patients for s in p.studies)

    def split(self, name: str) -> tuple[Patient, ...]:
        """Patients of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        return tuple(p for p in self.patients if p.split == name)
