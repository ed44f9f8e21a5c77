"""One synthetic patient's clinical timeline: covariates, scans, lesion volumes, survival.

This is the single source of the clinical and survival model; the imaging
cohort (:mod:`metstrack.synth.cohort`) and the clinical-only mode
(:mod:`metstrack.synth.clinical`) both call :func:`simulate_timeline`.

The model, in order (full description in ``docs/synth.md``):

1. Covariates: age, sex, primary histology, KPS, extracranial disease.
2. A scan schedule of ``max_studies`` studies, drawn before anything else:
   ``min_studies - 1`` diagnostic scans then the radiosurgery-planning scan on
   the day of the first radiosurgery (survival time zero), then follow-ups
   every few months.
3. "Natural" lesion volumes on that schedule: baseline lesions grow
   exponentially, are treated at the first radiosurgery when visible and then
   shrink (some resolve), new lesions appear small and grow, and a follow-up
   with a new untreated lesion over 20 mm3 triggers repeat radiosurgery.
4. The patient's total burden is made exactly linear in months: the
   least-squares line of the natural total over the whole schedule (kept
   positive), and each lesion keeps its share of the natural total at each
   scan. The slope of that line is the patient's rate of change of burden,
   and the least-squares slope over *any* two or more of the patient's scans
   equals it, so an analyst computing the rate from the scans that were
   written recovers exactly the covariate the hazard used.
5. Death time from a Weibull proportional-hazards model with log-hazard
   ``log(HR_rate) * rate_cm3_per_month + covariate effects``; censoring is
   independent (administrative, uniform). Only scans before death and not after
   the last follow-up are written; every patient has ``min_studies`` scans at
   or before time zero, so nobody is selected on surviving to a second scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metstrack.synth.config import CovariateEffects
from metstrack.types import DAYS_PER_MONTH

HISTOLOGIES: tuple[str, ...] = ("lung", "breast", "melanoma", "renal", "gastrointestinal", "other")
_HISTOLOGY_P = np.array([0.45, 0.15, 0.15, 0.07, 0.06, 0.12])
_SYSTEMIC = {
    "lung": ("osimertinib", "pembrolizumab", "carboplatin/pemetrexed"),
    "breast": ("trastuzumab", "capecitabine", "tucatinib"),
    "melanoma": ("nivolumab/ipilimumab", "dabrafenib/trametinib", "pembrolizumab"),
    "renal": ("sunitinib", "nivolumab", "cabozantinib"),
    "gastrointestinal": ("FOLFOX", "capecitabine", "pembrolizumab"),
    "other": ("chemotherapy", "immunotherapy", "hormonal therapy"),
}

#: Lesions are treated at radiosurgery once at least this large (mm3, unscaled).
TREAT_MIN_MM3 = 4.0
#: A new untreated lesion at least this large (mm3, unscaled) triggers repeat radiosurgery.
RETREAT_TRIGGER_MM3 = 20.0
#: Natural volumes below this (mm3, unscaled) count as resolved (0).
RESOLVED_MM3 = 0.5
#: Largest natural volume of one lesion (mm3, unscaled).
MAX_LESION_MM3 = 40000.0


@dataclass(frozen=True, eq=False)
class Timeline:
    """One patient's clinical course on the full scan schedule.

    Arrays cover every *scheduled* study (``n_scheduled``); the first
    ``n_written`` of them happen while the patient is alive and followed and are
    the ones written to disk.

    Attributes:
        patient_id: Release PatientID.
        age_years, sex, histology, kps, extracranial_disease: Covariates.
        srs_day: Days from the first scan to the first radiosurgery (time zero).
        planning_index: Index of the first radiosurgery-planning study.
        study_days: int64 (n_scheduled,) days from the first scan, increasing.
        n_written: Studies that occur before death and not after last follow-up.
        srs_at_study: bool (n_scheduled,) radiosurgery delivered at that study.
        lesion_volume_mm3: float64 (n_lesions, n_scheduled) planned volumes whose
            column sums are exactly linear in months.
        lesion_kind: ``"baseline"`` or ``"new"`` per lesion.
        lesion_treated_at: Study index of each lesion's radiosurgery, -1 if never.
        rate_cm3_per_month: Slope of the planned total volume (the hazard covariate).
        intercept_mm3: Planned total volume at day 0.
        linear_predictor: The Cox log-hazard (natural log) of this patient.
        death_day_from_srs: Drawn death time (days after the first radiosurgery).
        censor_day_from_srs: Drawn administrative censoring time (days).
        death: Death observed (death day <= censoring day).
        days_to_death_or_followup: ``min(death, censoring)`` in days from time zero.
        medications: (days_from_first_srs, name) pairs, in time order.
        followup_days_from_srs: Clinic follow-up visit days (after time zero).
        forced: True when the schedule was forced (``n_studies`` given); the
            survival time then does not follow the Cox model.
    """

    patient_id: str
    age_years: float
    sex: str
    histology: str
    kps: int
    extracranial_disease: bool
    srs_day: int
    planning_index: int
    study_days: np.ndarray
    n_written: int
    srs_at_study: np.ndarray
    lesion_volume_mm3: np.ndarray
    lesion_kind: tuple[str, ...]
    lesion_treated_at: np.ndarray
    rate_cm3_per_month: float
    intercept_mm3: float
    linear_predictor: float
    death_day_from_srs: int
    censor_day_from_srs: int
    death: bool
    days_to_death_or_followup: int
    medications: tuple[tuple[int, str], ...]
    followup_days_from_srs: tuple[int, ...]
    forced: bool = False

    @property
    def n_lesions(self) -> int:
        """Number of lesions over the whole schedule."""
        return int(self.lesion_volume_mm3.shape[0])

    @property
    def written_days(self) -> np.ndarray:
        """Days from baseline of the written studies, int64 (n_written,)."""
        return self.study_days[: self.n_written]

    @property
    def written_volumes_mm3(self) -> np.ndarray:
        """Planned lesion volumes at the written studies, (n_lesions, n_written)."""
        return self.lesion_volume_mm3[:, : self.n_written]

    def treated_mask(self) -> np.ndarray:
        """bool (n_lesions, n_scheduled): lesion treated at or before each study."""
        idx = np.arange(self.study_days.size)[None, :]
        t = self.lesion_treated_at[:, None]
        return (t >= 0) & (idx >= t)


def linear_predictor(
    hazard_ratio: float,
    effects: CovariateEffects,
    *,
    rate_cm3_per_month: np.ndarray | float,
    age_years: np.ndarray | float,
    kps: np.ndarray | float,
    extracranial_disease: np.ndarray | bool,
    histology: np.ndarray | str,
) -> np.ndarray:
    """Cox log-hazard of the planted model (vectorised over patients).

    Args:
        hazard_ratio: Planted hazard ratio per cm3/month of the burden rate.
        effects: The other planted hazard ratios.
        rate_cm3_per_month: Monthly rate of change of total volume (cm3/month).
        age_years: Age at first radiosurgery (years).
        kps: Karnofsky performance status (points).
        extracranial_disease: Active extracranial disease.
        histology: Primary histology names (see :data:`HISTOLOGIES`).

    Returns:
        float64 array of log-hazards (natural log), one per patient.
    """
    hist_hr = effects.histology_hr
    hist = np.atleast_1d(np.asarray(histology))
    hist_term = np.array([math.log(hist_hr[str(h)]) for h in hist])
    return (
        math.log(hazard_ratio) * np.asarray(rate_cm3_per_month, dtype=np.float64)
        + math.log(effects.hr_age_per_decade) * (np.asarray(age_years, dtype=np.float64) - 60) / 10
        + math.log(effects.hr_kps_per_10) * (np.asarray(kps, dtype=np.float64) - 80) / 10
        + math.log(effects.hr_extracranial) * np.asarray(extracranial_disease, dtype=np.float64)
        + hist_term
    )


def baseline_log10_median_mm3(small_lesion_fraction: float) -> float:
    """log10 median (mm3) of baseline lesion volumes for a target small-lesion share.

    Baseline volumes are log-normal with a log10 standard deviation of 1. New
    lesions (which start small) and treated lesions (which shrink) add about 6
    points to the share of observations under 10 mm3, so the baseline share is
    set to ``target - 0.06`` (calibrated on clinical-only cohorts: target 0.3
    gives about 0.36, the default median of 50 mm3).
    """
    from scipy.special import ndtri

    baseline_share = float(np.clip(small_lesion_fraction - 0.06, 0.01, 0.99))
    return float(1.0 - ndtri(baseline_share))


def _schedule(
    rng: np.random.Generator, n_pre: int, n_total: int, interval_months: float
) -> tuple[np.ndarray, int]:
    """Scan days from baseline and the index of the planning scan."""
    days = [0]
    for _ in range(n_pre - 1):
        days.append(days[-1] + int(rng.integers(14, 43)))
    srs_gap = int(rng.integers(3, 22))
    days.append(days[-1] + srs_gap)  # planning scan = day of first radiosurgery
    planning = len(days) - 1
    mean_days = interval_months * DAYS_PER_MONTH
    while len(days) < n_total:
        gap = max(30, int(round(rng.gamma(6.0, mean_days / 6.0))))
        days.append(days[-1] + gap)
    return np.asarray(days[:n_total], dtype=np.int64), planning


def _natural_volumes(
    rng: np.random.Generator,
    months: np.ndarray,
    planning: int,
    histology: str,
    max_lesions: int,
    log10_median_mm3: float,
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Unscaled lesion volumes (mm3) on the schedule, kinds, treatment study, SRS flags."""
    n_sched = months.size
    t_srs = months[planning]
    mean_extra = 4.5 if histology == "melanoma" else 2.5
    n0 = 1 + int(rng.negative_binomial(1.2, 1.2 / (1.2 + mean_extra)))
    n0 = min(n0, max_lesions)
    # New lesions: a per-patient rate (per month) over the follow-up span.
    span = max(months[-1] - t_srs, 0.0)
    new_rate = rng.gamma(0.8, 0.35)
    n_new = min(int(rng.poisson(new_rate * span)), max_lesions - n0)
    n = n0 + n_new

    vol0 = np.empty(n)
    onset = np.zeros(n)
    vol0[:n0] = 10 ** np.clip(rng.normal(log10_median_mm3, 1.0, n0), -0.3, 4.4)
    vol0[n0:] = 10 ** rng.uniform(-0.3, 0.6, n_new)
    if n_new:
        onset[n0:] = rng.uniform(t_srs + 0.5, months[-1], n_new)
    doubling = np.exp(rng.normal(math.log(3.0), 0.5, n))
    doubling[n0:] = np.exp(rng.normal(math.log(2.0), 0.4, n_new))
    residual = np.clip(rng.beta(2.0, 3.5, n) * 0.9, 0.0, 0.95)
    residual[rng.random(n) < 0.15] = 0.0  # complete responders resolve
    tau = rng.uniform(1.5, 4.0, n)
    # Local failure: some treated lesions regrow after a delay; more often in
    # patients with aggressive disease (a per-patient propensity).
    p_fail = float(np.clip(rng.beta(1.0, 4.0), 0.0, 1.0))
    fails = rng.random(n) < p_fail
    fail_delay = rng.uniform(2.0, 9.0, n)
    fail_doubling = np.exp(rng.normal(math.log(3.5), 0.4, n))
    kinds = ["baseline"] * n0 + ["new"] * n_new

    # Untreated natural growth at each study.
    dt = months[None, :] - onset[:, None]
    grow = np.where(dt >= 0, vol0[:, None] * np.exp2(np.clip(dt, 0, None) / doubling[:, None]), 0.0)
    grow = np.minimum(grow, MAX_LESION_MM3)

    treated_at = np.full(n, -1, dtype=np.int64)
    srs = np.zeros(n_sched, dtype=bool)
    vol = grow.copy()
    for j in range(planning, n_sched):
        current = vol[:, j]
        untreated = treated_at < 0
        if j == planning:
            trigger = True
        else:
            trigger = bool(np.any(untreated & (current >= RETREAT_TRIGGER_MM3)))
        if trigger:
            chosen = untreated & (current >= TREAT_MIN_MM3)
            if j == planning and not chosen.any():
                chosen = untreated & (current == current.max())
            if chosen.any():
                srs[j] = True
                treated_at[chosen] = j
                later = months[j:] - months[j]
                v_at = current[chosen][:, None]
                resp = residual[chosen][:, None] + (1 - residual[chosen][:, None]) * np.exp(
                    -later[None, :] / tau[chosen][:, None]
                )
                regrow = np.where(
                    fails[chosen][:, None] & (later[None, :] > fail_delay[chosen][:, None]),
                    np.exp2(
                        np.clip(later[None, :] - fail_delay[chosen][:, None], 0, None)
                        / fail_doubling[chosen][:, None]
                    )
                    - 1.0,
                    0.0,
                )
                vol[chosen, j:] = np.minimum(v_at * (resp + regrow), MAX_LESION_MM3)
    vol[vol < RESOLVED_MM3] = 0.0
    # The largest baseline lesion never fully resolves, so the total stays positive.
    big = int(np.argmax(vol0[:n0]))
    vol[big] = np.maximum(vol[big], np.where(months >= 0, 0.1 * vol0[big], 0.0))
    return vol, kinds, treated_at, srs


def _linearise(vol: np.ndarray, months: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Rescale lesion volumes so the total is an exact line in months (kept positive)."""
    total = vol.sum(axis=0)
    slope, intercept = np.polyfit(months, total, 1)
    line = intercept + slope * months
    floor = 0.5 * float(total.min())
    deficit = floor - float(line.min())
    if deficit > 0:
        intercept += deficit
        line = intercept + slope * months
    share = vol / total[None, :]
    return share * line[None, :], float(slope), float(intercept)


def simulate_timeline(
    ss: np.random.SeedSequence,
    patient_id: str,
    *,
    hazard_ratio: float,
    effects: CovariateEffects,
    min_studies: int = 2,
    max_studies: int = 8,
    interval_months: float = 3.0,
    max_lesions: int = 25,
    small_lesion_fraction: float = 0.3,
    volume_scale: float = 1.0,
    n_studies: int | None = None,
) -> Timeline:
    """Draw one patient's clinical course (see the module docstring).

    Args:
        ss: The patient's own seed sequence.
        patient_id: Release PatientID.
        hazard_ratio: Planted hazard ratio per cm3/month of the burden rate.
        effects: The other planted hazard ratios, baseline hazard and censoring.
        min_studies: Studies at or before the first radiosurgery (>= 2).
        max_studies: Scheduled studies (an upper bound on studies written).
        interval_months: Mean gap between follow-up scans.
        max_lesions: Cap on lesions (baseline plus new).
        small_lesion_fraction: Target share of lesion observations under 10 mm3;
            sets the median of the baseline lesion volumes (see
            :func:`baseline_log10_median_mm3`).
        volume_scale: Factor on every lesion volume (small imaging grids).
        n_studies: Force exactly this many written studies (tests); the
            survival time is then pushed past the last study and does not follow
            the Cox model (``forced`` is set).

    Returns:
        The :class:`Timeline`.
    """
    rng = np.random.default_rng(ss)
    histology = str(HISTOLOGIES[int(rng.choice(len(HISTOLOGIES), p=_HISTOLOGY_P))])
    p_female = {"breast": 0.99, "lung": 0.52, "melanoma": 0.38}.get(histology, 0.45)
    sex = "F" if rng.random() < p_female else "M"
    age = float(np.round(np.clip(rng.normal(62.0, 11.0), 25, 90), 1))
    kps = int(rng.choice([60, 70, 80, 90, 100], p=[0.08, 0.17, 0.3, 0.33, 0.12]))
    ecd = bool(rng.random() < 0.6)

    if n_studies is not None:
        n_pre = min(max(1, min_studies - 1), n_studies - 1)
        n_sched = n_studies
    else:
        n_pre = min_studies - 1
        n_sched = max_studies
    days, planning = _schedule(rng, n_pre, n_sched, interval_months)
    srs_day = int(days[planning])
    months = days / DAYS_PER_MONTH

    natural, kinds, treated_at, srs = _natural_volumes(
        rng,
        months,
        planning,
        histology,
        max_lesions,
        baseline_log10_median_mm3(small_lesion_fraction),
    )
    volumes, slope_mm3, intercept = _linearise(natural * volume_scale, months)
    rate = slope_mm3 / 1000.0

    eta = float(
        linear_predictor(
            hazard_ratio,
            effects,
            rate_cm3_per_month=rate,
            age_years=age,
            kps=kps,
            extracranial_disease=ecd,
            histology=histology,
        )[0]
    )
    k = effects.weibull_shape
    scale_days = effects.median_survival_months * DAYS_PER_MONTH / math.log(2.0) ** (1.0 / k)
    death = max(1, int(round(scale_days * (-math.log(rng.random()) / math.exp(eta)) ** (1 / k))))
    lo, hi = effects.admin_censoring_months
    censor = max(1, int(round(rng.uniform(lo, hi) * DAYS_PER_MONTH)))
    from_srs = days - srs_day
    if n_studies is not None:
        last = int(from_srs[-1])
        death, censor = max(death, last + 1), max(censor, last + 1)
        n_written = n_sched
    else:
        alive = (from_srs < death) & (from_srs <= censor)
        n_written = int(np.argmin(alive)) if not alive.all() else n_sched
    observed = min(death, censor)

    follow = []
    d = 0
    while True:
        d += max(30, int(round(rng.gamma(4.0, 3.0 * DAYS_PER_MONTH / 4.0))))
        if d >= observed:
            break
        follow.append(d)
    meds = [(-srs_day, "dexamethasone")]
    start = int(rng.integers(-srs_day, 60))
    if start < observed:
        meds.append((start, str(rng.choice(_SYSTEMIC[histology]))))
    meds.sort()

    return Timeline(
        patient_id=patient_id,
        age_years=age,
        sex=sex,
        histology=histology,
        kps=kps,
        extracranial_disease=ecd,
        srs_day=srs_day,
        planning_index=planning,
        study_days=days,
        n_written=n_written,
        srs_at_study=srs,
        lesion_volume_mm3=volumes,
        lesion_kind=tuple(kinds),
        lesion_treated_at=treated_at,
        rate_cm3_per_month=rate,
        intercept_mm3=intercept,
        linear_predictor=eta,
        death_day_from_srs=death,
        censor_day_from_srs=censor,
        death=death <= censor,
        days_to_death_or_followup=observed,
        medications=tuple(meds),
        followup_days_from_srs=tuple(follow),
        forced=n_studies is not None,
    )


def least_squares_rate_cm3_per_month(days: np.ndarray, total_volume_mm3: np.ndarray) -> float:
    """The shared rate definition: LS slope of total volume (cm3) against months.

    Args:
        days: Days from baseline of each study, shape (n,), n >= 2.
        total_volume_mm3: Total metastasis volume at each study (mm3), shape (n,).

    Returns:
        Slope in cm3/month with months = days / 30.4375.
    """
    m = np.asarray(days, dtype=np.float64) / DAYS_PER_MONTH
    v = np.asarray(total_volume_mm3, dtype=np.float64) / 1000.0
    return float(np.polyfit(m, v, 1)[0])
