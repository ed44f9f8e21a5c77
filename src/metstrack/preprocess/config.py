"""Settings and result records of preprocessing (``metstrack preprocess``).

:class:`PreprocessConfig` is what a run is configured with (TOML sections
``[within_study]``, ``[through_time]``, ``[brain]``); :class:`StudyOutcome` and
:class:`PreprocessReport` are what it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from metstrack.errors import ConfigError, did_you_mean
from metstrack.preprocess.brain import (
    BRAIN_METHODS,
    BrainMaskConfig,
    BrainMethod,
)
from metstrack.preprocess.register import RegistrationConfig

#: Folder of the preprocessing records inside the output dataset.
PREPROCESS_DIR = "preprocess"
REFERENCE_SEQUENCE = "CT1"
#: Image interpolation of resampling (``image_interpolation``).
Interpolation = Literal["linear", "bspline"]
#: Intensity normalisation (``normalize``).
Normalization = Literal["zscore", "none"]
#: Spline order of each interpolation.
INTERPOLATIONS: dict[str, int] = dict(zip(get_args(Interpolation), (1, 3), strict=True))
NORMALISATIONS: tuple[str, ...] = get_args(Normalization)
#: What preprocessing does with a sequence stored on the T1 post's own grid
#: (:attr:`PreprocessConfig.shared_grid`).
SharedGrid = Literal["auto", "skip", "register"]


def _within_default() -> RegistrationConfig:
    return RegistrationConfig(
        shrink_factors=(4, 2),
        smoothing_sigmas_mm=(2.0, 1.0),
        iterations=60,
        sampling_percentage=0.1,
    )


def _through_default() -> RegistrationConfig:
    return RegistrationConfig(
        shrink_factors=(4, 2, 1),
        smoothing_sigmas_mm=(2.0, 1.0, 0.0),
        iterations=100,
        sampling_percentage=0.05,
        init="geometry",
    )


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of ``metstrack preprocess`` (TOML sections ``[within_study]``,
    ``[through_time]``, ``[brain]``).

    Attributes:
        spacing_mm: Isotropic output voxel size.
        image_interpolation: ``linear`` or ``bspline`` (images; labels always nearest).
        brain_mask: Estimate the brain mask with ``brain_method``; False for
            skull-stripped data (the brain is then the CT1's non-zero voxels).
        brain_method: ``auto`` (non-zero voxels of a skull-stripped, zero-background
            CT1, else deepbet's CNN), ``deepbet``, ``heuristic`` or ``nonzero``
            (:func:`metstrack.preprocess.brain.estimate_brain_mask`).
        n4: Run N4 bias-field correction on every image (inside the head).
        n4_shrink_factor: Downsampling of N4's fitting grid.
        normalize: ``zscore`` (per channel inside the brain, 0 outside) or ``none``.
        register_within_study: Register each sequence to the study's CT1 (else the
            scanner frame is trusted and only ``baseline_to_study`` is applied).
        shared_grid: With ``register_within_study``, what to do with a sequence
            stored on exactly the CT1's grid (same shape, affine equal within
            1e-3 mm): ``auto`` (default) does not register it again when the input
            layout is one whose provider co-registers the sequences
            (:attr:`metstrack.io.layouts.Layout.coregistered`: BraTS-METS) and
            registers it otherwise (a scanner may copy one series' geometry to the
            next while the patient moves); ``skip`` never registers it again;
            ``register`` always does.
        metric_mask_mm: When > 0 and a brain mask exists, restrict the through-time
            metric to the baseline brain dilated by this many mm (0: whole image).
        within_study: Registration settings sequence -> CT1.
        through_time: Registration settings follow-up CT1 -> baseline CT1
            (``through_time.affine`` adds the affine stage).
        brain: Brain-mask heuristic parameters.
    """

    spacing_mm: float = 1.0
    image_interpolation: Interpolation = "linear"
    brain_mask: bool = True
    brain_method: BrainMethod = "auto"
    n4: bool = False
    n4_shrink_factor: int = 4
    normalize: Normalization = "zscore"
    register_within_study: bool = True
    shared_grid: SharedGrid = "auto"
    metric_mask_mm: float = 0.0
    within_study: RegistrationConfig = field(default_factory=_within_default)
    through_time: RegistrationConfig = field(default_factory=_through_default)
    brain: BrainMaskConfig = field(default_factory=BrainMaskConfig)

    def __post_init__(self) -> None:
        if self.image_interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"image_interpolation: {self.image_interpolation!r} is not one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        if self.normalize not in NORMALISATIONS:
            raise ConfigError(
                f"normalize: {self.normalize!r} is not one of {', '.join(NORMALISATIONS)}"
            )
        if self.shared_grid not in get_args(SharedGrid):
            raise ConfigError(
                f"shared_grid: {self.shared_grid!r}; "
                + did_you_mean(self.shared_grid, get_args(SharedGrid))
            )
        if self.spacing_mm <= 0:
            raise ConfigError(f"spacing_mm must be positive, found {self.spacing_mm}")
        if self.brain_method not in BRAIN_METHODS:
            raise ConfigError(
                f"brain_method: {self.brain_method!r}; "
                + did_you_mean(self.brain_method, BRAIN_METHODS)
            )


@dataclass(frozen=True)
class StudyOutcome:
    """What happened to one study.

    Attributes:
        patient_id: Release PatientID.
        study_id: Release StudyID.
        status: ``done`` (processed now), ``skipped`` (already finished) or ``failed``.
        message: The error for a failed study, else empty.
        seconds: Wall time spent on the study.
        outputs: Files written (relative to the output root).
    """

    patient_id: str
    study_id: str
    status: str
    message: str = ""
    seconds: float = 0.0
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreprocessReport:
    """Result of :func:`preprocess_dataset`.

    Attributes:
        out_root: The output dataset.
        outcomes: One entry per study, patients in order.
        seconds: Total wall time.
        config_path: The resolved config written beside the outputs.
    """

    out_root: Path
    outcomes: tuple[StudyOutcome, ...]
    seconds: float
    config_path: Path

    def count(self, status: str) -> int:
        """Number of studies with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> tuple[StudyOutcome, ...]:
        """The failed studies."""
        return tuple(o for o in self.outcomes if o.status == "failed")

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "out_root": str(self.out_root),
            "seconds": round(self.seconds, 3),
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "studies": [
                {
                    "PatientID": o.patient_id,
                    "StudyID": o.study_id,
                    "status": o.status,
                    "message": o.message,
                    "seconds": round(o.seconds, 3),
                }
                for o in self.outcomes
            ],
        }
