"""The survival analysis table: one row per patient, time, event and covariates.

Inputs are the per-study burden table written by ``metstrack track`` (or the
synthetic cohort's ground truth) and the release's clinical tables. Columns of
the burden table: ``PatientID``, ``days_from_baseline``, ``total_volume_mm3``,
``lesion_count`` (``StudyID`` optional).

Definitions:
- ``time_days``: days from the origin to death or last follow-up. With origin
  ``first_srs`` it is the clinical table's ``days_to_death_or_followup``; with
  ``first_scan`` the first radiosurgery's offset from the first scan is added.
- ``rate_volume_cm3_per_month``: the monthly rate of change of total
  metastasis volume over the patient's studies (see
  :func:`metstrack.core.rate.monthly_rate_of_change`), NaN for
  patients with one study.
- ``n_treatments``: number of radiosurgery sessions (``visit_class`` 2 events).
- ``wbrt``: 1 when a medication/radiosurgery event's description mentions
  whole-brain radiotherapy (``WBRT``, ``whole brain``, ``whole-brain``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np
import pandas as pd

from metstrack.core.rate import (
    RateMethod,
    monthly_count_rate_of_change,
    monthly_rate_of_change,
)
from metstrack.errors import SurvivalDataError, did_you_mean
from metstrack.survival.config import COVARIATE_UNITS, Origin, SurvivalConfig
from metstrack.types import ClinicalEvent, ClinicalPatient

log = logging.getLogger(__name__)

BURDEN_COLUMNS = ("PatientID", "days_from_baseline", "total_volume_mm3", "lesion_count")
_WBRT = re.compile(r"wbrt|whole[- ]?brain", re.IGNORECASE)


@dataclass(frozen=True)
class AnalysisTable:
    """A per-patient table ready for a survival fit.

    Attributes:
        frame: One row per patient: ``PatientID``, ``time_days``, ``death`` (0/1)
            and the covariate columns.
        covariates: Model columns (after one-hot encoding of categories).
        origin: The time origin used.
        n_input: Patients in the clinical table.
        dropped: Patients dropped per reason (``"missing kps"``, ``"no imaging"``...).
        notes: Human-readable remarks (imputation, constant columns...).
    """

    frame: pd.DataFrame
    covariates: tuple[str, ...]
    origin: Origin
    n_input: int
    dropped: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def n_patients(self) -> int:
        """Patients kept."""
        return len(self.frame)

    @property
    def n_events(self) -> int:
        """Deaths among the kept patients."""
        return int(self.frame["death"].sum())


def clinical_frame(patients: Sequence[ClinicalPatient]) -> pd.DataFrame:
    """Records to a DataFrame with the schema's column names."""
    rows = [
        {
            "PatientID": p.patient_id,
            "age_years": p.age_years,
            "sex": p.sex,
            "primary_histology": p.primary_histology,
            "kps": p.kps,
            "extracranial_disease": p.extracranial_disease,
            "death": p.death,
            "days_to_death_or_followup": p.days_to_death_or_followup,
            "first_srs_days_from_baseline_scan": p.first_srs_days_from_baseline_scan,
        }
        for p in patients
    ]
    return pd.DataFrame(rows)


def treatment_features(events: Sequence[ClinicalEvent]) -> pd.DataFrame:
    """Per patient: ``n_treatments`` (radiosurgery sessions) and ``wbrt`` (0/1)."""
    rows: dict[str, dict[str, int]] = {}
    for e in events:
        r = rows.setdefault(e.patient_id, {"n_treatments": 0, "wbrt": 0})
        if e.visit_class == 2:
            r["n_treatments"] += 1
        if e.visit_class in (1, 2) and _WBRT.search(e.description or ""):
            r["wbrt"] = 1
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("PatientID").reset_index()
    if frame.empty:
        frame = pd.DataFrame(columns=["PatientID", "n_treatments", "wbrt"])
    return frame


def check_burden(burden: pd.DataFrame, source: str = "burden table") -> pd.DataFrame:
    """Validate a burden table's columns and values; return it sorted by patient and day."""
    if "PatientID" not in burden.columns and "patient_id" in burden.columns:
        burden = burden.rename(columns={"patient_id": "PatientID"})  # `metstrack track` naming
    missing = [c for c in BURDEN_COLUMNS if c not in burden.columns]
    if missing:
        raise SurvivalDataError(
            f"{source}: missing column(s) {missing}; expected {list(BURDEN_COLUMNS)} "
            "(the burden.csv written by `metstrack track`)"
        )
    b = burden.copy()
    b["PatientID"] = b["PatientID"].astype(str)
    for col in ("days_from_baseline", "total_volume_mm3", "lesion_count"):
        b[col] = pd.to_numeric(b[col], errors="coerce")
        bad = b[col].isna() | ~np.isfinite(b[col])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise SurvivalDataError(f"{source}: line {row}: column {col!r} is not a finite number")
    if (b["total_volume_mm3"] < 0).any():
        raise SurvivalDataError(f"{source}: negative total_volume_mm3")
    return b.sort_values(["PatientID", "days_from_baseline"], kind="stable").reset_index(drop=True)


def patient_rates(
    burden: pd.DataFrame,
    *,
    method: RateMethod = "ols",
    until_day: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Per-patient rates of change and baseline burden from a burden table.

    Args:
        burden: Validated burden table (see :func:`check_burden`).
        method: Rate definition (see tracking).
        until_day: Optional per-patient cut-off on ``days_from_baseline``
            (inclusive): only studies up to it are used (landmarks, time-varying fits).

    Returns:
        DataFrame with ``PatientID``, ``rate_volume_cm3_per_month``,
        ``rate_count_per_month``, ``baseline_volume_cm3``,
        ``baseline_lesion_count``, ``n_studies``.
    """
    out = []
    for pid, g in burden.groupby("PatientID", sort=True):
        if until_day is not None:
            g = g[g["days_from_baseline"] <= until_day.get(str(pid), np.inf)]
        if g.empty:
            continue
        days = g["days_from_baseline"].to_numpy(float)
        vol = monthly_rate_of_change(days, g["total_volume_mm3"].to_numpy(float), method=method)
        cnt = monthly_count_rate_of_change(days, g["lesion_count"].to_numpy(float))
        out.append(
            {
                "PatientID": str(pid),
                "rate_volume_cm3_per_month": vol.value,
                "rate_count_per_month": cnt.value,
                "baseline_volume_cm3": float(g["total_volume_mm3"].iloc[0]) / 1000.0,
                "baseline_lesion_count": float(g["lesion_count"].iloc[0]),
                "n_studies": len(g),
            }
        )
    return pd.DataFrame(
        out,
        columns=[
            "PatientID",
            "rate_volume_cm3_per_month",
            "rate_count_per_month",
            "baseline_volume_cm3",
            "baseline_lesion_count",
            "n_studies",
        ],
    )


def survival_times(clinical: pd.DataFrame, origin: Origin) -> pd.Series:
    """Days from ``origin`` to death or last follow-up, indexed like ``clinical``."""
    t = pd.to_numeric(clinical["days_to_death_or_followup"], errors="coerce")
    if origin == "first_scan":
        t = t + pd.to_numeric(
            clinical["first_srs_days_from_baseline_scan"], errors="coerce"
        ).fillna(0)
    elif origin != "first_srs":
        raise SurvivalDataError(f"unknown origin {origin!r}; valid: {', '.join(get_args(Origin))}")
    return t


def build_analysis_table(
    clinical: pd.DataFrame,
    burden: pd.DataFrame,
    *,
    events: Sequence[ClinicalEvent] = (),
    config: SurvivalConfig | None = None,
    clinical_source: str = "the clinical patient table",
    burden_source: str = "the burden table",
) -> AnalysisTable:
    """Join clinical records and burden dynamics into one row per patient.

    Args:
        clinical: Per-patient clinical table (schema columns, e.g. from
            :func:`clinical_frame`).
        burden: Per-study burden (see :data:`BURDEN_COLUMNS`).
        events: Clinical events, for ``n_treatments`` and ``wbrt``.
        config: Analysis settings (origin, covariates, imputation, rate method).
        clinical_source: The clinical table's file, named in messages.
        burden_source: The burden table's file, named in messages.

    Returns:
        The analysis table, with patients dropped per reason reported.

    Raises:
        SurvivalDataError: Missing columns, zero or negative survival times,
            unknown covariates, no patients left, or clinical patients without
            burden rows (unless ``config.allow_missing_imaging``; they are named).
    """
    cfg = config or SurvivalConfig()
    if clinical.empty:
        raise SurvivalDataError("the clinical patient table is empty: nothing to analyse")
    burden = check_burden(burden)
    clin = clinical.copy()
    clin["PatientID"] = clin["PatientID"].astype(str)
    n_input = len(clin)
    notes: list[str] = []
    dropped: dict[str, int] = {}

    clin["time_days"] = survival_times(clin, cfg.origin)
    bad_t = clin["time_days"].isna() | (clin["time_days"] <= 0)
    if bad_t.any():
        ids = ", ".join(clin.loc[bad_t, "PatientID"].astype(str).head(5))
        raise SurvivalDataError(
            f"{int(bad_t.sum())} patient(s) have a zero, negative or missing survival time "
            f"from origin {cfg.origin!r} (e.g. {ids}); check days_to_death_or_followup, or use "
            "--origin first_scan if deaths precede the first radiosurgery"
        )
    clin["death"] = clin["death"].map(_as_bool).astype(int)
    clin["extracranial_disease"] = clin["extracranial_disease"].map(_as_bool).astype(float)
    clin["sex_male"] = (clin["sex"].astype(str).str.upper().str[0] == "M").astype(float)
    clin.loc[clin["sex"].isna(), "sex_male"] = np.nan

    rates = patient_rates(burden, method=cfg.rate_method)
    imaging_ids = set(rates["PatientID"])
    no_img = ~clin["PatientID"].isin(imaging_ids)
    if no_img.any():
        missing = sorted(clin.loc[no_img, "PatientID"].astype(str))
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        if not cfg.allow_missing_imaging:
            raise SurvivalDataError(
                f"{clinical_source}: {len(missing)} patient(s) have no rows in {burden_source} "
                f"(no imaging): {shown}; add their burden rows, remove them from the clinical "
                "table, or pass --allow-missing-imaging to drop them"
            )
        dropped["no imaging"] = len(missing)
        notes.append(
            f"{len(missing)} patient(s) of {clinical_source} have no rows in {burden_source} "
            f"and are dropped (--allow-missing-imaging): {shown}"
        )
    extra = imaging_ids - set(clin["PatientID"])
    if extra:
        notes.append(f"{len(extra)} patient(s) with imaging are absent from the clinical table")
    frame = clin.merge(rates, on="PatientID", how="inner")
    one_study = frame["n_studies"] < 2
    if one_study.any() and any(c.startswith("rate_") for c in cfg.covariates):
        dropped["one study (rate undefined)"] = int(one_study.sum())
    tf = treatment_features(events)
    frame = frame.merge(tf, on="PatientID", how="left")
    for c in ("n_treatments", "wbrt"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float).fillna(0.0)

    model_cols: list[str] = []
    for cov in cfg.covariates:
        if cov == "primary_histology":
            continue
        if cov not in frame.columns:
            raise SurvivalDataError(
                f"unknown covariate {cov!r}; "
                + did_you_mean(cov, [*COVARIATE_UNITS, "primary_histology"])
            )
        frame[cov] = pd.to_numeric(frame[cov], errors="coerce")
        model_cols.append(cov)
    cat_cols = ["primary_histology"] if "primary_histology" in cfg.covariates else []

    # Missing values: report per column, then drop or impute.
    check_cols = model_cols + cat_cols
    if cfg.impute == "median":
        for c in model_cols:
            n = int(frame[c].isna().sum())
            if n and not c.startswith("rate_"):
                frame[c] = frame[c].fillna(frame[c].median())
                notes.append(f"imputed {n} missing {c} with the median")
        for c in cat_cols:
            n = int(frame[c].isna().sum())
            if n:
                frame[c] = frame[c].fillna(frame[c].mode().iloc[0])
                notes.append(f"imputed {n} missing {c} with the mode")
    keep = pd.Series(True, index=frame.index)
    for c in check_cols:
        miss = frame[c].isna() & keep
        if miss.any() and not (c.startswith("rate_") and "one study (rate undefined)" in dropped):
            dropped[f"missing {c}"] = int(miss.sum())
        keep &= ~frame[c].isna()
    frame = frame[keep].reset_index(drop=True)

    for c in cat_cols:
        frame[c] = frame[c].astype(str)
        ref = frame[c].value_counts().idxmax() if len(frame) else ""
        levels = sorted(set(frame[c]) - {ref})
        for lv in levels:
            name = f"{c}[{lv}]"
            frame[name] = (frame[c] == lv).astype(float)
            model_cols.append(name)
        if levels:
            notes.append(f"{c} one-hot encoded against reference level {ref!r}")
    if frame.empty:
        raise SurvivalDataError(
            f"no patient is left after dropping missing values ({dropped}); "
            "use impute='median' or fewer covariates"
        )
    cols = ["PatientID", "time_days", "death", *model_cols]
    extras = [c for c in ("n_studies", "first_srs_days_from_baseline_scan") if c not in cols]
    return AnalysisTable(
        frame=frame[cols + extras],
        covariates=tuple(model_cols),
        origin=cfg.origin,
        n_input=n_input,
        dropped=dropped,
        notes=tuple(notes),
    )


def _as_bool(v: object) -> bool:
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("1", "true", "yes", "y", "t"):
            return True
        if s in ("0", "false", "no", "n", "f", ""):
            return False
        raise SurvivalDataError(f"cannot read {v!r} as yes/no")
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return False
    return bool(v)
