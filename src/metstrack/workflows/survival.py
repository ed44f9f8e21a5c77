"""The whole survival analysis as one call, writing tables, figures and the config."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metstrack.config import save_config
from metstrack.core import schema
from metstrack.core.atomic import write_csv_atomic, write_json_atomic
from metstrack.errors import DatasetError, SurvivalDataError
from metstrack.io.figures import plot_kaplan_meier
from metstrack.io.release import read_clinical_tables
from metstrack.survival.config import SurvivalConfig
from metstrack.survival.cox import CoxAnalysis
from metstrack.survival.dynamic import fit_time_varying, landmark_table, time_varying_table
from metstrack.survival.km import KaplanMeierResult, kaplan_meier
from metstrack.survival.table import (
    AnalysisTable,
    build_analysis_table,
    check_burden,
    clinical_frame,
)
from metstrack.types import ClinicalEvent

log = logging.getLogger(__name__)

PRIMARY = "rate_volume_cm3_per_month"


@dataclass(frozen=True)
class SurvivalResult:
    """Everything ``metstrack survival`` computes.

    Attributes:
        table: The baseline analysis table.
        cox: The baseline Cox fit.
        landmark: The landmark Cox fit, when requested.
        time_varying: Summary of the time-varying Cox fit, when requested.
        km: Kaplan-Meier result by rate group.
        files: Files written, by name.
    """

    table: AnalysisTable
    cox: CoxAnalysis
    landmark: CoxAnalysis | None
    time_varying: pd.DataFrame | None
    km: KaplanMeierResult | None
    files: dict[str, Path]

    def headline(self) -> dict[str, float]:
        """HR of the primary covariate with its CI, concordance, patients and events."""
        hr, lo, hi = (
            self.cox.hazard_ratio(PRIMARY)
            if PRIMARY in self.cox.covariates_
            else (float("nan"),) * 3
        )
        return {
            "hr_rate_volume_per_cm3_month": hr,
            "hr_lower_95": lo,
            "hr_upper_95": hi,
            "concordance": self.cox.concordance_,
            "n_patients": float(self.cox.n_patients_),
            "n_events": float(self.cox.n_events_),
        }


def run_survival(
    clinical: pd.DataFrame,
    burden: pd.DataFrame,
    out_dir: str | Path | None,
    *,
    events: Sequence[ClinicalEvent] = (),
    config: SurvivalConfig | None = None,
    inputs: dict[str, str] | None = None,
) -> SurvivalResult:
    """Build the table, fit Cox (baseline, landmark, time-varying), draw Kaplan-Meier.

    Args:
        clinical: Per-patient clinical table (schema columns).
        burden: Per-study burden (``PatientID``, ``days_from_baseline``,
            ``total_volume_mm3``, ``lesion_count``).
        out_dir: Folder for ``cox_summary.csv``, ``analysis_table.csv``,
            ``ph_test.csv``, ``km_*.png/svg``, ``km_curves.csv``, ``summary.json``
            and ``config.json``; ``None`` writes nothing.
        events: Clinical events (treatments).
        config: Settings.
        inputs: Input paths recorded in the provenance.

    Returns:
        A :class:`SurvivalResult`.
    """
    cfg = config or SurvivalConfig()
    burden = check_burden(burden)
    sources = {}
    if inputs and inputs.get("data"):
        sources["clinical_source"] = str(schema.table_path(inputs["data"], schema.PATIENTS_TABLE))
    if inputs and inputs.get("burden"):
        sources["burden_source"] = str(inputs["burden"])
    table = build_analysis_table(clinical, burden, events=events, config=cfg, **sources)
    cox = CoxAnalysis(penalizer=cfg.penalizer).fit(table.frame, covariates=table.covariates)
    lm = None
    if cfg.landmark_days is not None:
        lt = landmark_table(table, burden, cfg.landmark_days, method=cfg.rate_method)
        lm = CoxAnalysis(penalizer=cfg.penalizer).fit(lt.frame, covariates=lt.covariates)
    tv = None
    if cfg.time_varying:
        long = time_varying_table(table, burden, method=cfg.rate_method)
        try:
            tv = fit_time_varying(long, table.covariates, penalizer=cfg.penalizer)
        except SurvivalDataError as exc:
            log.warning("time-varying fit skipped: %s", exc)
            cox.notes_.append(f"time-varying fit skipped: {exc}")
    km = None
    if PRIMARY in table.frame.columns:
        try:
            km = kaplan_meier(table.frame, group_col=PRIMARY, how=cfg.groups)
        except SurvivalDataError as exc:
            cox.notes_.append(f"Kaplan-Meier skipped: {exc}")
    files: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files["analysis_table"] = write_csv_atomic(out / "analysis_table.csv", table.frame)
        files["cox_summary"] = write_csv_atomic(out / "cox_summary.csv", cox.summary_)
        files["ph_test"] = write_csv_atomic(out / "ph_test.csv", cox.ph_test_)
        if lm is not None:
            files["landmark_summary"] = write_csv_atomic(
                out / "landmark_cox_summary.csv", lm.summary_
            )
        if tv is not None:
            files["time_varying_summary"] = write_csv_atomic(
                out / "time_varying_cox_summary.csv", tv
            )
        if km is not None:
            files["km_curves"] = write_csv_atomic(out / "km_curves.csv", km.curves)
            files["km_at_risk"] = write_csv_atomic(out / "km_at_risk.csv", km.at_risk)
            png, svg = plot_kaplan_meier(km, out / "km_rate_of_change")
            files["km_png"], files["km_svg"] = png, svg
        summary = {
            "headline": None,
            "n_input_patients": table.n_input,
            "n_patients": table.n_patients,
            "n_events": table.n_events,
            "dropped": table.dropped,
            "notes": [*table.notes, *cox.notes_],
            "origin": table.origin,
            "concordance": cox.concordance_,
            "likelihood_ratio_test": cox.lr_test_,
            "cox": cox.summary_.to_dict(orient="records"),
            "ph_test": cox.ph_test_.to_dict(orient="records"),
            "landmark": None if lm is None else lm.summary_.to_dict(orient="records"),
            "time_varying": None if tv is None else tv.to_dict(orient="records"),
            "kaplan_meier": None
            if km is None
            else {
                "median_days": km.median_days,
                "logrank_p": km.logrank_p,
                "logrank_statistic": km.logrank_statistic,
            },
        }
        result = SurvivalResult(table, cox, lm, tv, km, files)
        summary["headline"] = result.headline()
        files["summary"] = write_json_atomic(out / "summary.json", summary)
        files["config"] = save_config(cfg, out / "config.json", inputs=inputs or {})
        return SurvivalResult(table, cox, lm, tv, km, files)
    return SurvivalResult(table, cox, lm, tv, km, files)


def resolve_burden(data: Path, burden: Path | None, tracking: Path | None) -> Path:
    """Pick the burden table: ``burden``, else ``<tracking>/burden.csv``, else ground truth.

    Raises:
        DatasetError: The chosen table does not exist (the message names the fix).
    """
    if burden is not None:
        candidates = [burden]
    elif tracking is not None:
        candidates = [tracking / "burden.csv"]
    else:
        candidates = [data / schema.GROUND_TRUTH_DIR / "burden.csv"]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(
        f"{candidates[0]}: burden table not found; run `metstrack track` and pass "
        "--tracking OUT (or --burden FILE with PatientID, days_from_baseline, "
        "total_volume_mm3, lesion_count)"
    )


def survival_from_dataset(
    data: str | Path,
    out: str | Path,
    config: SurvivalConfig | None = None,
    *,
    burden: str | Path | None = None,
    tracking: str | Path | None = None,
) -> SurvivalResult:
    """``metstrack survival`` as a function: read the clinical tables and a burden table, fit.

    Args:
        data: Dataset root with ``tables/`` (clinical tables).
        out: Output folder.
        config: Settings.
        burden: A burden CSV (else ``tracking``'s, else the synthetic ground truth's).
        tracking: Output folder of ``metstrack track``.

    Returns:
        What :func:`run_survival` returned.
    """
    data = Path(data)
    burden_path = resolve_burden(
        data,
        Path(burden) if burden is not None else None,
        Path(tracking) if tracking is not None else None,
    )
    patients, events, _ = read_clinical_tables(data)
    bt = pd.read_csv(burden_path, dtype={"PatientID": str, "StudyID": str})
    return run_survival(
        clinical_frame(patients),
        bt,
        out,
        events=events,
        config=config,
        inputs={"data": str(data), "burden": str(burden_path)},
    )
