"""Analyses that respect when the burden rate becomes known.

A rate of change needs two scans, so a patient's covariate does not exist
before the second scan. Fitting it as if it were known at time zero credits
the patient with survival time before the data existed (immortal-time bias).
Two remedies:

- :func:`landmark_table`: choose a landmark ``L`` days after the origin, keep
  patients alive (and uncensored) at ``L``, compute the rate from scans up to
  ``L`` only, and measure survival from ``L``.
- :func:`time_varying_table` + :func:`fit_time_varying`: a long table with one
  interval per scan, ``[t_k, t_{k+1})`` on the survival clock, whose rate uses
  the scans up to ``k``; intervals start at the second scan. Fitted with
  lifelines' :class:`~lifelines.CoxTimeVaryingFitter`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines import CoxTimeVaryingFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning

from metstrack.core.rate import monthly_count_rate_of_change, monthly_rate_of_change
from metstrack.errors import SurvivalDataError
from metstrack.survival.cox import check_survival_data, unit_of
from metstrack.survival.table import AnalysisTable, patient_rates


def _scan_clock_days(table: AnalysisTable, burden: pd.DataFrame) -> pd.DataFrame:
    """Burden rows with ``clock_days``: scan time on the analysis table's survival clock."""
    f = table.frame[["PatientID", "first_srs_days_from_baseline_scan"]]
    b = burden.merge(f, on="PatientID", how="inner")
    offset = (
        0.0 if table.origin == "first_scan" else b["first_srs_days_from_baseline_scan"].fillna(0)
    )
    b["clock_days"] = b["days_from_baseline"] - offset
    return b


def landmark_table(
    table: AnalysisTable, burden: pd.DataFrame, landmark_days: float, *, method: str = "ols"
) -> AnalysisTable:
    """Landmark version of ``table``: at-risk at ``landmark_days``, rates from earlier scans.

    Args:
        table: Baseline analysis table (from :func:`build_analysis_table`).
        burden: Per-study burden table.
        landmark_days: Landmark time on the table's survival clock (days).
        method: Rate definition.

    Returns:
        A table whose ``time_days`` counts from the landmark and whose rate
        columns use scans at or before it; patients with fewer than two such
        scans or not at risk at the landmark are dropped (counted in ``dropped``).
    """
    f = table.frame.copy()
    at_risk = f["time_days"] > landmark_days
    b = _scan_clock_days(table, burden)
    cutoff = {
        pid: float(landmark_days + (0.0 if table.origin == "first_scan" else off))
        for pid, off in zip(
            f["PatientID"], f["first_srs_days_from_baseline_scan"].fillna(0), strict=True
        )
    }
    rates = patient_rates(b, method=method, until_day=cutoff).set_index("PatientID")
    f = f[at_risk].copy()
    for c in ("rate_volume_cm3_per_month", "rate_count_per_month", "baseline_volume_cm3"):
        if c in f.columns:
            f[c] = f["PatientID"].map(rates[c])
    if "n_studies" in f.columns:
        f["n_studies"] = f["PatientID"].map(rates["n_studies"]).fillna(0)
    rate_cols = [c for c in table.covariates if c.startswith("rate_")]
    ok = f[rate_cols].notna().all(axis=1) if rate_cols else pd.Series(True, index=f.index)
    f = f[ok]
    f["time_days"] = f["time_days"] - landmark_days
    dropped = dict(table.dropped)
    dropped[f"not at risk at landmark {landmark_days:g} d"] = int((~at_risk).sum())
    dropped[f"fewer than 2 scans before landmark {landmark_days:g} d"] = int((~ok).sum())
    return AnalysisTable(
        frame=f.reset_index(drop=True),
        covariates=table.covariates,
        origin=f"{table.origin}+landmark {landmark_days:g} d",
        n_input=table.n_input,
        dropped=dropped,
        notes=table.notes,
    )


def time_varying_table(
    table: AnalysisTable, burden: pd.DataFrame, *, method: str = "ols"
) -> pd.DataFrame:
    """Long table (``PatientID``, ``start``, ``stop``, ``death``, covariates) for a time-varying fit.

    Each scan ``k >= 1`` (0-based, time order) opens an interval ``[t_k, t_{k+1})``
    (the last one ends at death or censoring) whose rate columns use scans
    ``0..k``. Scans before the origin are clamped to it; scans at or after the
    end of follow-up are ignored. Static covariates are copied to every interval.
    """
    b = _scan_clock_days(table, burden)
    rate_cols = [c for c in table.covariates if c.startswith("rate_")]
    static = [c for c in table.covariates if c not in rate_cols]
    by_pid = {pid: g.sort_values("clock_days") for pid, g in b.groupby("PatientID", sort=False)}
    rows = []
    for rec in table.frame.to_dict(orient="records"):
        g = by_pid.get(rec["PatientID"])
        if g is None or len(g) < 2:
            continue
        clock = g["clock_days"].to_numpy(float)
        days = g["days_from_baseline"].to_numpy(float)
        vol = g["total_volume_mm3"].to_numpy(float)
        cnt = g["lesion_count"].to_numpy(float)
        end = float(rec["time_days"])
        for k in range(1, len(g)):
            start = max(0.0, clock[k])
            stop = min(end, clock[k + 1]) if k + 1 < len(g) else end
            if start >= end:
                break
            if stop <= start:
                continue
            row = {
                "PatientID": rec["PatientID"],
                "start": start,
                "stop": stop,
                "death": int(rec["death"]) if stop >= end else 0,
                "scan_day": days[k],
            }
            if "rate_volume_cm3_per_month" in rate_cols:
                row["rate_volume_cm3_per_month"] = monthly_rate_of_change(
                    days[: k + 1], vol[: k + 1], method=method
                ).value
            if "rate_count_per_month" in rate_cols:
                row["rate_count_per_month"] = monthly_count_rate_of_change(
                    days[: k + 1], cnt[: k + 1]
                ).value
            for c in static:
                row[c] = rec[c]
            rows.append(row)
    return pd.DataFrame(
        rows, columns=["PatientID", "start", "stop", "death", "scan_day", *rate_cols, *static]
    )


def fit_time_varying(
    long: pd.DataFrame, covariates: Sequence[str], *, penalizer: float = 0.0
) -> pd.DataFrame:
    """Fit a time-varying Cox model; return a summary (covariate, unit, coef, hr, CI, p).

    Raises:
        SurvivalDataError: No events, constant covariate, non-convergence.
    """
    covariates = list(covariates)
    if long.empty:
        raise SurvivalDataError("no patient has two scans before the end of follow-up")
    # reuse the patient-level checks on the interval table
    tmp = long.assign(_dur=long["stop"] - long["start"])
    check_survival_data(tmp, "_dur", "death", covariates)
    ctv = CoxTimeVaryingFitter(penalizer=penalizer)
    data = long[["PatientID", "start", "stop", "death", *covariates]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            ctv.fit(data, id_col="PatientID", start_col="start", stop_col="stop", event_col="death")
        except (ConvergenceError, np.linalg.LinAlgError) as exc:
            raise SurvivalDataError(
                f"the time-varying Cox fit did not converge ({exc}); drop a covariate or use "
                "a penalizer"
            ) from None
    s = ctv.summary
    return pd.DataFrame(
        {
            "covariate": s.index,
            "unit": [unit_of(c) for c in s.index],
            "coef": s["coef"].to_numpy(),
            "hr": s["exp(coef)"].to_numpy(),
            "hr_lower_95": s["exp(coef) lower 95%"].to_numpy(),
            "hr_upper_95": s["exp(coef) upper 95%"].to_numpy(),
            "p": s["p"].to_numpy(),
        }
    )
