"""Settings of the synthetic longitudinal cohort (:class:`SynthConfig`).

Load with :func:`metstrack.config.load_config` (TOML + ``key=value``
overrides, unknown keys rejected with a suggestion)::

    cfg = load_config(SynthConfig, "synth.toml", ["n_patients=20", "hazard_ratio=1.5"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from metstrack.errors import ConfigError, did_you_mean

#: Smallest and largest supported grid edge (voxels).
MIN_SHAPE = 32
MAX_SHAPE = 256


@dataclass(frozen=True)
class CovariateEffects:
    """Planted Cox model besides the burden-rate effect: covariates, baseline hazard, censoring.

    The log-hazard of a patient is ``log(hazard_ratio) * rate_cm3_per_month
    + log(hr_age_per_decade) * (age_years - 60) / 10 + log(hr_kps_per_10) * (kps - 80) / 10
    + log(hr_extracranial) * extracranial_disease + log(hr_histology[h])``
    with lung the reference histology. See ``docs/synth.md``.

    Attributes:
        hr_age_per_decade: Hazard ratio per 10 years of age.
        hr_kps_per_10: Hazard ratio per 10 points of Karnofsky performance status.
        hr_extracranial: Hazard ratio of active extracranial disease (yes vs no).
        hr_breast, hr_melanoma, hr_renal, hr_gastrointestinal, hr_other: Hazard
            ratio of each primary histology relative to lung.
        median_survival_months: Median survival of a patient whose log-hazard is 0
            (baseline Weibull scale).
        weibull_shape: Shape of the Weibull baseline hazard (1 = exponential).
        admin_censoring_months: Uniform range (min, max) of administrative
            censoring after the first radiosurgery (staggered entry).
    """

    hr_age_per_decade: float = 1.10
    hr_kps_per_10: float = 0.80
    hr_extracranial: float = 1.50
    hr_breast: float = 0.80
    hr_melanoma: float = 1.30
    hr_renal: float = 1.00
    hr_gastrointestinal: float = 1.20
    hr_other: float = 1.10
    median_survival_months: float = 14.0
    weibull_shape: float = 1.1
    admin_censoring_months: tuple[float, float] = (6.0, 72.0)

    def __post_init__(self) -> None:
        for name in (
            "hr_age_per_decade",
            "hr_kps_per_10",
            "hr_extracranial",
            "hr_breast",
            "hr_melanoma",
            "hr_renal",
            "hr_gastrointestinal",
            "hr_other",
            "median_survival_months",
            "weibull_shape",
        ):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"covariates.{name} must be a positive number, found {v!r}")
        lo, hi = self.admin_censoring_months
        if not 0 < lo <= hi:
            raise ConfigError(
                f"covariates.admin_censoring_months must be (min, max) with 0 < min <= max, "
                f"found {self.admin_censoring_months!r}"
            )

    @property
    def histology_hr(self) -> dict[str, float]:
        """Hazard ratio of each histology (lung = 1, the reference)."""
        return {
            "lung": 1.0,
            "breast": self.hr_breast,
            "melanoma": self.hr_melanoma,
            "renal": self.hr_renal,
            "gastrointestinal": self.hr_gastrointestinal,
            "other": self.hr_other,
        }


#: The synthetic world's options (typed choices; the config loader and the CLI check them).
Anatomy = Literal["template", "phantom"]
Contrast = Literal["clinical", "randomized", "mixed"]
Acquisition = Literal["clinical", "fixed"]
Skull = Literal["on", "stripped", "mixed"]


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one synthetic cohort.

    Attributes:
        n_patients: Number of patients.
        seed: Master seed; patient ``i`` uses ``SeedSequence(seed).spawn(n)[i]``, so
            patients are independent of each other and of ``workers``.
        shape: Grid edge K (a K^3 grid), 32..256; 48 for unit tests, 192 at 1 mm is
            a full-size head.
        spacing_mm: Isotropic voxel spacing in mm.
        min_studies: Fewest studies per patient; all of them happen at or before the
            first radiosurgery (survival time zero), so no patient is selected on
            surviving long enough to be scanned twice.
        max_studies: Most studies per patient (follow-ups stop at death, censoring
            or this many studies).
        follow_up_interval_months: Mean gap between follow-up scans (gamma distributed).
        motion_max_deg: Largest rotation of a follow-up against the baseline (degrees);
            0 with ``motion_max_mm`` 0 disables misalignment.
        motion_max_mm: Largest translation of a follow-up (mm).
        labelled: ``"radiosurgery"`` (only radiosurgery-planning studies are flagged
            labelled in the release tables), ``"all"``, or a fraction in [0, 1]
            (``0.3`` or ``"0.3"``) of studies flagged at random.
        split_fractions: (train, val, test) fractions of patients.
        max_lesions: Cap on lesions per patient (baseline plus new).
        small_lesion_fraction: Target share of lesion observations under 10 mm3 at
            full size; it sets the median baseline lesion volume (0.3 gives about
            0.36 in practice, and more on small grids where volumes are scaled).
        hazard_ratio: Planted hazard ratio per 1 cm3/month of the monthly rate of
            change of total metastasis volume (least-squares slope of total volume
            in cm3 against months = days / 30.4375 over the patient's studies).
        vessel_bait: Render the persistent enhancing vessels (on the template
            anatomy the arterial tree, deep veins and sinuses; on the phantom dots
            and short tubes): false-positive bait, never labelled.
        anatomy: ``template`` (default: the MNI ICBM152 2009 brain deformed per
            patient) or ``phantom`` (procedural head, for tiny unit-test volumes).
        contrast: ``clinical`` (plausible per-tissue intensities), ``randomized``
            (SynthSeg-style domain randomisation, for training robust models) or
            ``mixed`` (each patient at random, half and half).
        acquisition: ``clinical`` (follow-ups on their own grids: voxel size, thick
            oblique slices, per-study scanner scale) or ``fixed`` (every study on
            the baseline grid, scale 1).
        skull: ``on``, ``stripped`` (BraTS style, zero background) or ``mixed``
            (each patient at random).
        workers: Parallel processes for imaging cohorts (1 = in-process).
        covariates: The other planted hazard ratios, baseline hazard and censoring.
    """

    n_patients: int = 4
    seed: int = 0
    shape: int = 96
    spacing_mm: float = 1.0
    min_studies: int = 2
    max_studies: int = 8
    follow_up_interval_months: float = 3.0
    motion_max_deg: float = 7.0
    motion_max_mm: float = 5.0
    labelled: str | float = "radiosurgery"
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    max_lesions: int = 25
    small_lesion_fraction: float = 0.3
    hazard_ratio: float = 1.27
    vessel_bait: bool = True
    anatomy: Anatomy = "template"
    contrast: Contrast = "clinical"
    acquisition: Acquisition = "clinical"
    skull: Skull = "on"
    workers: int = 1
    covariates: CovariateEffects = field(default_factory=CovariateEffects)

    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise ConfigError(f"n_patients must be >= 1, found {self.n_patients}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, found {self.seed}")
        if not MIN_SHAPE <= self.shape <= MAX_SHAPE:
            raise ConfigError(
                f"shape must be between {MIN_SHAPE} and {MAX_SHAPE} voxels, found {self.shape}"
            )
        if not 0.2 <= self.spacing_mm <= 5.0:
            raise ConfigError(f"spacing_mm must be in [0.2, 5], found {self.spacing_mm}")
        if not 2 <= self.min_studies <= self.max_studies:
            raise ConfigError(
                f"need 2 <= min_studies <= max_studies, found {self.min_studies}, "
                f"{self.max_studies}"
            )
        if self.max_studies > 30:
            raise ConfigError(f"max_studies must be <= 30, found {self.max_studies}")
        if self.follow_up_interval_months <= 0:
            raise ConfigError("follow_up_interval_months must be positive")
        if self.motion_max_deg < 0 or self.motion_max_mm < 0:
            raise ConfigError("motion_max_deg and motion_max_mm must be >= 0")
        self.labelled_fraction()  # validates
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise ConfigError(
                f"split_fractions must be 3 non-negative numbers, found {self.split_fractions!r}"
            )
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"split_fractions must sum to 1, found {self.split_fractions!r} "
                f"(sum {sum(self.split_fractions):.3g})"
            )
        if self.max_lesions < 1:
            raise ConfigError(f"max_lesions must be >= 1, found {self.max_lesions}")
        if not 0 <= self.small_lesion_fraction <= 1:
            raise ConfigError("small_lesion_fraction must be in [0, 1]")
        if not (self.hazard_ratio > 0 and math.isfinite(self.hazard_ratio)):
            raise ConfigError(
                f"hazard_ratio must be a positive number, found {self.hazard_ratio!r}"
            )
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, found {self.workers}")
        for name, options in (
            ("anatomy", get_args(Anatomy)),
            ("contrast", get_args(Contrast)),
            ("acquisition", get_args(Acquisition)),
            ("skull", get_args(Skull)),
        ):
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(
                    f"{name}: unknown value {value!r} ({did_you_mean(str(value), options)})"
                )

    def labelled_fraction(self) -> float | None:
        """``None`` for the radiosurgery policy, else the fraction of studies flagged."""
        text = str(self.labelled).strip().lower()
        if text == "radiosurgery":
            return None
        if text == "all":
            return 1.0
        try:
            frac = float(text)
        except ValueError:
            raise ConfigError(
                f"labelled must be 'radiosurgery', 'all' or a fraction in [0, 1], "
                f"found {self.labelled!r}"
            ) from None
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"labelled fraction must be in [0, 1], found {frac}")
        return frac

    @property
    def fov_mm(self) -> float:
        """Field of view edge in mm."""
        return self.shape * self.spacing_mm

    @property
    def volume_scale(self) -> float:
        """Factor applied to lesion volumes on fields of view smaller than a head.

        A 192 mm field of view holds an adult head; smaller grids hold a head
        scaled to fit, and lesion volumes are scaled by ``fov / 192 mm`` (capped
        at 1; linear rather than cubic so that 48^3 test grids still show several
        lesions, at the price of large lesions being big for the small brain). The hazard
        uses the rate of the volumes actually written, so the planted
        coefficient is unchanged. The clinical-only mode uses 1.
        """
        return float(min(1.0, self.fov_mm / 192.0))
