"""Cox proportional-hazards fits with the checks a clinical paper needs.

:class:`CoxAnalysis` wraps lifelines' :class:`~lifelines.CoxPHFitter`:
settings in the constructor, ``fit`` returns self, results end in ``_``,
``summary_`` is a table (hazard ratios per documented unit and per standard
deviation, 95% CIs, p-values) and :meth:`CoxAnalysis.print_summary` is text.
Every fit also runs the proportional-hazards check (scaled Schoenfeld
residuals against rank-transformed time) and the likelihood-ratio test.

Bad data (no events, a constant covariate, a covariate that separates events
perfectly, non-positive times) raises :class:`SurvivalDataError` with guidance
instead of a fitter traceback.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from lifelines.statistics import proportional_hazard_test

from metstrack.errors import SurvivalDataError
from metstrack.survival.config import COVARIATE_UNITS

log = logging.getLogger(__name__)

#: |coef| above which a fit is treated as diverging (perfect separation).
_SEPARATION_COEF = 15.0


def unit_of(covariate: str) -> str:
    """Documented unit of a covariate's hazard ratio."""
    if covariate in COVARIATE_UNITS:
        return COVARIATE_UNITS[covariate]
    if covariate.startswith("primary_histology["):
        return f"{covariate[len('primary_histology[') : -1]} vs reference histology"
    return "per unit"


def check_survival_data(
    frame: pd.DataFrame, duration_col: str, event_col: str, covariates: Sequence[str]
) -> list[str]:
    """Check data before a fit; return notes. Raises SurvivalDataError on unusable data."""
    notes: list[str] = []
    if len(frame) == 0:
        raise SurvivalDataError("no patients to fit")
    t = pd.to_numeric(frame[duration_col], errors="coerce")
    if t.isna().any() or (t <= 0).any():
        n = int((t.isna() | (t <= 0)).sum())
        raise SurvivalDataError(
            f"{n} row(s) have a zero, negative or missing {duration_col}; survival times must "
            "be positive (check the origin and the follow-up dates)"
        )
    n_events = int(frame[event_col].sum())
    if n_events == 0:
        raise SurvivalDataError(
            f"no events (deaths) among {len(frame)} patients: a Cox model cannot be fitted; "
            "extend follow-up or check the death column"
        )
    for c in covariates:
        col = pd.to_numeric(frame[c], errors="coerce")
        if col.isna().any():
            raise SurvivalDataError(f"covariate {c!r} has missing values; impute or drop them")
        if col.nunique() <= 1:
            raise SurvivalDataError(
                f"covariate {c!r} is constant ({col.iloc[0]!r}) across all {len(frame)} patients; "
                "its effect cannot be estimated: remove it from the covariates"
            )
    if n_events < 10 * max(1, len(covariates)):
        notes.append(
            f"only {n_events} events for {len(covariates)} covariate(s) (fewer than 10 per "
            "covariate): estimates may be unstable"
        )
    return notes


class CoxAnalysis:
    """A Cox proportional-hazards analysis.

    Args:
        penalizer: L2 penalty (lifelines ``penalizer``); 0 for the plain partial likelihood.
        alpha: 1 - confidence level of the intervals (0.05 gives 95% CIs).
    """

    def __init__(self, *, penalizer: float = 0.0, alpha: float = 0.05) -> None:
        self.penalizer = penalizer
        self.alpha = alpha

    def fit(
        self,
        frame: pd.DataFrame,
        *,
        duration_col: str = "time_days",
        event_col: str = "death",
        covariates: Sequence[str],
        entry_col: str | None = None,
    ) -> CoxAnalysis:
        """Fit the model.

        Args:
            frame: One row per patient.
            duration_col: Positive survival times (days).
            event_col: 1 for death, 0 for censoring.
            covariates: Model columns.
            entry_col: Optional delayed-entry times (left truncation), same clock.

        Returns:
            self, with ``summary_``, ``concordance_``, ``lr_test_``, ``ph_test_``,
            ``notes_``, ``n_patients_``, ``n_events_`` set.
        """
        covariates = list(covariates)
        self.notes_ = check_survival_data(frame, duration_col, event_col, covariates)
        cols = [duration_col, event_col, *covariates] + ([entry_col] if entry_col else [])
        data = frame[cols].astype(float)
        cph = CoxPHFitter(penalizer=self.penalizer, alpha=self.alpha)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cph.fit(data, duration_col=duration_col, event_col=event_col, entry_col=entry_col)
            except (ConvergenceError, np.linalg.LinAlgError) as exc:
                raise SurvivalDataError(
                    _separation_message(data, covariates, event_col, exc)
                ) from None
        conv = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
        big = cph.params_.abs() > _SEPARATION_COEF
        if big.any() or any("separation" in str(w.message).lower() for w in conv):
            raise SurvivalDataError(_separation_message(data, covariates, event_col, None))
        for w in conv:
            self.notes_.append(f"lifelines: {w.message}")
        self.model_ = cph
        self.covariates_ = tuple(covariates)
        self.n_patients_ = len(data)
        self.n_events_ = int(data[event_col].sum())
        self.concordance_ = float(cph.concordance_index_)
        lr = cph.log_likelihood_ratio_test()
        self.lr_test_ = {
            "statistic": float(lr.test_statistic),
            "df": int(lr.degrees_freedom),
            "p": float(lr.p_value),
        }
        self.summary_ = self._summary(data, cph)
        self.ph_test_ = self._ph_test(cph, data)
        return self

    def _summary(self, data: pd.DataFrame, cph: CoxPHFitter) -> pd.DataFrame:
        s = cph.summary
        lo = f"exp(coef) lower {100 * (1 - self.alpha):.0f}%"
        hi = f"exp(coef) upper {100 * (1 - self.alpha):.0f}%"
        clo = f"coef lower {100 * (1 - self.alpha):.0f}%"
        chi = f"coef upper {100 * (1 - self.alpha):.0f}%"
        rows = []
        for cov in s.index:
            sd = float(data[cov].std(ddof=1))
            rows.append(
                {
                    "covariate": cov,
                    "unit": unit_of(cov),
                    "coef": float(s.loc[cov, "coef"]),
                    "se": float(s.loc[cov, "se(coef)"]),
                    "hr": float(s.loc[cov, "exp(coef)"]),
                    "hr_lower_95": float(s.loc[cov, lo]),
                    "hr_upper_95": float(s.loc[cov, hi]),
                    "p": float(s.loc[cov, "p"]),
                    "sd": sd,
                    "hr_per_sd": float(np.exp(s.loc[cov, "coef"] * sd)),
                    "hr_per_sd_lower_95": float(np.exp(s.loc[cov, clo] * sd)),
                    "hr_per_sd_upper_95": float(np.exp(s.loc[cov, chi] * sd)),
                }
            )
        return pd.DataFrame(rows)

    def _ph_test(self, cph: CoxPHFitter, data: pd.DataFrame) -> pd.DataFrame:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = proportional_hazard_test(cph, data, time_transform="rank")
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, not fatal
            self.notes_.append(f"proportional-hazards test failed: {exc}")
            return pd.DataFrame(columns=["covariate", "statistic", "p", "violated"])
        summ = res.summary.reset_index()
        summ = summ.rename(columns={summ.columns[0]: "covariate", "test_statistic": "statistic"})
        out = summ[["covariate", "statistic", "p"]].copy()
        out["violated"] = out["p"] < 0.05
        for cov in out.loc[out["violated"], "covariate"]:
            self.notes_.append(
                f"proportional hazards may not hold for {cov} (Schoenfeld test p < 0.05): "
                "consider stratifying or a time-varying effect"
            )
        return out

    def hazard_ratio(self, covariate: str) -> tuple[float, float, float]:
        """``(hr, lower_95, upper_95)`` of one covariate per its documented unit."""
        row = self.summary_.set_index("covariate").loc[covariate]
        return float(row["hr"]), float(row["hr_lower_95"]), float(row["hr_upper_95"])

    def print_summary(self) -> str:
        """Return the fit as text (hazard ratios, concordance, LR test, PH check)."""
        lines = [
            f"Cox proportional hazards: {self.n_patients_} patients, {self.n_events_} deaths, "
            f"penalizer {self.penalizer}",
        ]
        for _, r in self.summary_.iterrows():
            lines.append(
                f"  {r['covariate']:<32} HR {r['hr']:.3f} ({r['hr_lower_95']:.3f}-"
                f"{r['hr_upper_95']:.3f}) p={r['p']:.3g}  [{r['unit']}]; "
                f"per SD {r['hr_per_sd']:.3f}"
            )
        lines.append(f"  concordance {self.concordance_:.3f}")
        lines.append(
            f"  likelihood-ratio test {self.lr_test_['statistic']:.2f} on {self.lr_test_['df']} df, "
            f"p={self.lr_test_['p']:.3g}"
        )
        viol = self.ph_test_.loc[self.ph_test_["violated"], "covariate"].tolist()
        lines.append(
            f"  PH check: {'violated for ' + ', '.join(viol) if viol else 'no violation at p<0.05'}"
        )
        lines.extend(f"  note: {n}" for n in self.notes_)
        return "\n".join(lines)


def _separation_message(
    data: pd.DataFrame, covariates: Sequence[str], event_col: str, exc: Exception | None
) -> str:
    suspects = []
    for c in covariates:
        col = data[c]
        ev = data[event_col] > 0
        if col.nunique() <= 10:
            by_level = data.groupby(c)[event_col].agg(["sum", "count"])
            if ((by_level["sum"] == 0) | (by_level["sum"] == by_level["count"])).any():
                suspects.append(c)
        elif (
            ev.any()
            and (~ev).any()
            and (col[ev].min() > col[~ev].max() or col[ev].max() < col[~ev].min())
        ):
            suspects.append(c)
    who = f" (likely {', '.join(suspects)})" if suspects else ""
    why = f": {exc}" if exc else ""
    return (
        f"the Cox fit did not converge: a covariate separates events perfectly{who}{why}; "
        "drop that covariate, merge sparse categories, or use a penalizer (e.g. --penalizer 0.1)"
    )
