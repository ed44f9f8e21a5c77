"""Settings of the survival analysis (a typed config, loadable from TOML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metstrack.core.rate import RateMethod

#: Time zero of the survival analysis.
Origin = Literal["first_srs", "first_scan"]
#: What happens to patients with a missing covariate.
Impute = Literal["none", "median"]
#: Kaplan-Meier grouping by rate of change.
KMGroups = Literal["median", "tertiles"]
#: Covariates the analysis table can provide, with their documented units.
COVARIATE_UNITS: dict[str, str] = {
    "rate_volume_cm3_per_month": "per 1 cm3/month of total metastasis volume",
    "rate_count_per_month": "per 1 lesion/month",
    "baseline_volume_cm3": "per 1 cm3 of total volume at the first scan",
    "baseline_lesion_count": "per lesion at the first scan",
    "age_years": "per year of age",
    "kps": "per 1 point of Karnofsky performance status",
    "extracranial_disease": "present vs absent",
    "sex_male": "male vs female",
    "n_treatments": "per radiosurgery session",
    "wbrt": "whole-brain radiotherapy given vs not",
}

DEFAULT_COVARIATES: tuple[str, ...] = (
    "rate_volume_cm3_per_month",
    "age_years",
    "kps",
    "extracranial_disease",
    "primary_histology",
)


@dataclass(frozen=True)
class SurvivalConfig:
    """Settings of ``metstrack survival``.

    Attributes:
        origin: Time zero: ``"first_srs"`` (first radiosurgery, default) or ``"first_scan"``.
        covariates: Covariates of the Cox model; ``primary_histology`` is one-hot
            encoded against the most frequent histology.
        rate_method: Rate-of-change definition passed to tracking (``"ols"``,
            ``"log_ols"``, ``"first_last"``).
        impute: ``"none"`` drops patients with a missing covariate (reported per
            column); ``"median"`` fills numbers with the median and categories
            with the mode (documented, reported).
        penalizer: L2 penalty of lifelines' CoxPHFitter (0 = none).
        groups: Kaplan-Meier grouping by rate of change: ``"median"`` or ``"tertiles"``.
        landmark_days: When set, a landmark analysis at this many days after
            the origin is fitted too.
        time_varying: Also fit a time-varying Cox model with the rate updated at each scan.
        seed: Seed recorded with the outputs (the fits are deterministic).
        allow_missing_imaging: Drop clinical patients without burden rows (named
            in a note) instead of refusing the analysis.
    """

    origin: Origin = "first_srs"
    covariates: tuple[str, ...] = DEFAULT_COVARIATES
    rate_method: RateMethod = "ols"
    impute: Impute = "none"
    penalizer: float = 0.0
    groups: KMGroups = "median"
    landmark_days: float | None = None
    time_varying: bool = True
    seed: int = 0
    allow_missing_imaging: bool = False
