"""Kaplan-Meier curves by rate-of-change group, log-rank test, numbers at risk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import numpy as np
import pandas as pd

from metstrack.errors import SurvivalDataError
from metstrack.survival.config import KMGroups

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class KaplanMeierResult:
    """Kaplan-Meier estimates per group.

    Attributes:
        groups: Group label per patient (aligned with the input frame).
        curves: Long table: group, time_days, survival, lower_95, upper_95.
        median_days: Median survival per group (NaN when not reached).
        logrank_statistic: Multi-group log-rank chi-square.
        logrank_p: Its p-value.
        at_risk: Numbers at risk per group at ``at_risk_times_days``.
        at_risk_times_days: Times of the at-risk table.
    """

    groups: pd.Series
    curves: pd.DataFrame
    median_days: dict[str, float]
    logrank_statistic: float
    logrank_p: float
    at_risk: pd.DataFrame
    at_risk_times_days: tuple[float, ...]


def rate_groups(values: pd.Series, how: KMGroups = "median") -> pd.Series:
    """Split patients by a covariate: ``median`` (low/high) or ``tertiles`` (low/mid/high)."""
    v = pd.to_numeric(values, errors="coerce")
    if how == "median":
        med = float(v.median())
        return pd.Series(np.where(v > med, "high", "low"), index=values.index)
    if how == "tertiles":
        q1, q2 = np.nanquantile(v, [1 / 3, 2 / 3])
        return pd.Series(
            np.where(v <= q1, "low", np.where(v <= q2, "mid", "high")), index=values.index
        )
    raise SurvivalDataError(f"unknown grouping {how!r}; valid: {', '.join(get_args(KMGroups))}")


def kaplan_meier(
    frame: pd.DataFrame,
    *,
    group_col: str = "rate_volume_cm3_per_month",
    how: KMGroups = "median",
    duration_col: str = "time_days",
    event_col: str = "death",
) -> KaplanMeierResult:
    """Kaplan-Meier estimates per group and the log-rank test across groups."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    groups = rate_groups(frame[group_col], how)
    if groups.nunique() < 2:
        raise SurvivalDataError(f"{group_col} does not split patients into two or more groups")
    order = [g for g in ("low", "mid", "high") if g in set(groups)]
    tmax = float(frame[duration_col].max())
    times = tuple(float(t) for t in np.linspace(0, tmax, 6).round(0))
    curves, medians, risk = [], {}, []
    for g in order:
        sel = groups == g
        kmf = KaplanMeierFitter(label=g).fit(
            frame.loc[sel, duration_col], frame.loc[sel, event_col]
        )
        sf = kmf.survival_function_
        ci = kmf.confidence_interval_
        curves.append(
            pd.DataFrame(
                {
                    "group": g,
                    "time_days": sf.index.to_numpy(float),
                    "survival": sf.iloc[:, 0].to_numpy(),
                    "lower_95": ci.iloc[:, 0].to_numpy(),
                    "upper_95": ci.iloc[:, 1].to_numpy(),
                }
            )
        )
        medians[g] = float(kmf.median_survival_time_)
        d = frame.loc[sel, duration_col].to_numpy(float)
        risk.append({"group": g, **{f"{t:g}": int((d >= t).sum()) for t in times}})
    lr = multivariate_logrank_test(frame[duration_col], groups, frame[event_col])
    return KaplanMeierResult(
        groups=groups,
        curves=pd.concat(curves, ignore_index=True),
        median_days=medians,
        logrank_statistic=float(lr.test_statistic),
        logrank_p=float(lr.p_value),
        at_risk=pd.DataFrame(risk),
        at_risk_times_days=times,
    )


def kaplan_meier_figure(result: KaplanMeierResult, *, title: str = "") -> Figure:
    """Draw the curves with CIs and a numbers-at-risk table (no file is written).

    Returns:
        The matplotlib figure; :func:`metstrack.io.figures.plot_kaplan_meier` writes
        it as ``.png`` and ``.svg``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"low": "#1b9e77", "mid": "#7570b3", "high": "#d95f02"}
    fig, (ax, axr) = plt.subplots(
        2, 1, figsize=(7, 5.6), gridspec_kw={"height_ratios": [4, 1]}, sharex=True
    )
    for g, c in result.curves.groupby("group", sort=False):
        col = colors.get(str(g))
        med = result.median_days[str(g)]
        lab = f"{g} rate (median {med / 30.4375:.1f} mo)" if np.isfinite(med) else f"{g} rate"
        ax.step(c["time_days"] / 30.4375, c["survival"], where="post", color=col, label=lab)
        ax.fill_between(
            c["time_days"] / 30.4375,
            c["lower_95"],
            c["upper_95"],
            step="post",
            color=col,
            alpha=0.15,
        )
    ax.set_ylabel("overall survival")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right", frameon=False)
    ax.set_title(title or f"Kaplan-Meier by rate of change (log-rank p = {result.logrank_p:.2g})")
    axr.set_axis_off()
    times_mo = [t / 30.4375 for t in result.at_risk_times_days]
    for i, (_, r) in enumerate(result.at_risk.iterrows()):
        y = 0.8 - 0.3 * i
        axr.text(-0.02, y, str(r["group"]), transform=axr.transAxes, ha="right", va="center")
        for t, tm in zip(result.at_risk_times_days, times_mo, strict=True):
            axr.text(
                tm,
                y,
                str(r[f"{t:g}"]),
                ha="center",
                va="center",
                transform=axr.get_xaxis_transform(),
            )
    axr.text(0.5, 1.05, "number at risk", transform=axr.transAxes, ha="center", fontsize=8)
    ax.set_xlabel("months from origin")
    ax.xaxis.set_tick_params(labelbottom=True)
    fig.tight_layout()
    return fig
