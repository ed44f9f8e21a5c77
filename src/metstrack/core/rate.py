"""Monthly rate of change of metastasis burden (the published survival predictor).

Definition (method ``"ols"``, the default and the one the synthetic cohort's
survival model uses): the ordinary least-squares slope of a patient's total
metastasis volume in cm3 against time in months over all of the patient's
studies, with ``months = days_from_baseline / DAYS_PER_MONTH`` (30.4375 days,
i.e. 365.25 / 12). Units: cm3 per month. The same slope of the lesion count
gives lesions per month.

Alternatives (selectable with ``method``):

- ``"log_ols"``: least-squares slope of ``ln(V_cm3 + LOG_EPSILON_CM3)`` per
  month (units: ln(cm3) per month; ``exp(slope) - 1`` is the relative change
  per month). ``LOG_EPSILON_CM3 = 0.001`` cm3 (1 mm3, about one voxel at 1 mm)
  keeps studies without any lesion finite.
- ``"first_last"``: ``(V_last - V_first) / (months_last - months_first)``.

A rate needs at least two studies at distinct times. With one study (or all
studies on the same day) the rate is undefined: ``value`` is NaN,
``defined`` is False and ``reason`` says why; such patients are reported, not
silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from metstrack.errors import ConfigError, did_you_mean
from metstrack.types import DAYS_PER_MONTH

#: Rate-of-change definitions (a typed choice; the config loader checks it by name).
RateMethod = Literal["ols", "log_ols", "first_last"]
#: Valid values of ``method``.
RATE_METHODS: tuple[str, ...] = get_args(RateMethod)
#: Added to the volume in cm3 before the logarithm of the ``"log_ols"`` method.
LOG_EPSILON_CM3 = 0.001
#: mm3 per cm3.
MM3_PER_CM3 = 1000.0


@dataclass(frozen=True)
class RateOfChange:
    """A per-month rate of change of one patient's burden.

    Attributes:
        value: Slope per month in ``units`` (NaN when undefined).
        units: ``"cm3/month"``, ``"ln(cm3)/month"`` or ``"lesions/month"``.
        method: ``"ols"``, ``"log_ols"`` or ``"first_last"``.
        n_studies: Number of studies used.
        span_months: Months between the first and the last study.
        defined: False when fewer than two distinct time points exist.
        reason: Why the rate is undefined (empty when defined).
    """

    value: float
    units: str
    method: str
    n_studies: int
    span_months: float
    defined: bool
    reason: str = ""


def _check_inputs(days: Sequence[float], values: Sequence[float], what: str) -> tuple:
    d = np.asarray(days, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if d.shape != v.shape:
        raise ValueError(f"days ({d.size}) and {what} ({v.size}) must have the same length")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(v))):
        raise ValueError(f"days and {what} must be finite")
    if np.any(v < 0):
        raise ValueError(f"{what} must be non-negative")
    order = np.argsort(d, kind="stable")
    return d[order], v[order]


def _slope(months: np.ndarray, y: np.ndarray, method: str) -> float:
    if method == "first_last":
        return float((y[-1] - y[0]) / (months[-1] - months[0]))
    xm = months - months.mean()
    return float(np.sum(xm * (y - y.mean())) / np.sum(xm * xm))


def _undefined(method: str, units: str, n: int, span: float, reason: str) -> RateOfChange:
    return RateOfChange(math.nan, units, method, n, span, False, reason)


def rate_per_month(
    days: Sequence[float],
    values: Sequence[float],
    *,
    method: RateMethod = "ols",
    units: str = "units/month",
    log_epsilon: float = LOG_EPSILON_CM3,
) -> RateOfChange:
    """Per-month slope of any burden series (volume in cm3, lesion count...).

    Args:
        days: (N,) float days from baseline, one per study (any order; sorted here).
        values: (N,) float non-negative burden at each study.
        method: ``"ols"``, ``"log_ols"`` or ``"first_last"`` (see module docs).
        units: Units string recorded in the result.
        log_epsilon: Added to ``values`` before the logarithm (``"log_ols"`` only).

    Returns:
        A :class:`RateOfChange`; NaN with ``defined=False`` for fewer than two
        distinct days.
    """
    if method not in RATE_METHODS:
        raise ConfigError(f"unknown rate method {method!r}; {did_you_mean(method, RATE_METHODS)}")
    d, v = _check_inputs(days, values, "values")
    n = int(d.size)
    if n == 0:
        return _undefined(method, units, 0, math.nan, "no studies")
    months = d / DAYS_PER_MONTH
    span = float(months[-1] - months[0])
    if n == 1:
        return _undefined(method, units, 1, 0.0, "one study: a rate needs two or more studies")
    if span <= 0:
        return _undefined(method, units, n, 0.0, "all studies on the same day")
    y = np.log(v + log_epsilon) if method == "log_ols" else v
    return RateOfChange(_slope(months, y, method), units, method, n, span, True, "")


def monthly_rate_of_change(
    days: Sequence[float],
    total_volume_mm3: Sequence[float],
    *,
    method: RateMethod = "ols",
) -> RateOfChange:
    """Monthly rate of change of total metastasis volume (cm3 per month by default).

    This is the survival predictor of NYUMets-Brain; the synthetic cohort's
    survival model and the survival analysis call exactly this function.

    Args:
        days: (N,) float days from baseline of the patient's studies.
        total_volume_mm3: (N,) float total metastasis volume at each study in mm3
            (converted to cm3 here).
        method: ``"ols"`` (cm3/month), ``"log_ols"`` (ln(cm3)/month, epsilon
            :data:`LOG_EPSILON_CM3`) or ``"first_last"`` (cm3/month).

    Returns:
        A :class:`RateOfChange` (NaN and ``defined=False`` for one-study patients).

    Example:
        >>> monthly_rate_of_change([0, 60.875], [1000.0, 3000.0]).value
        1.0
    """
    v_cm3 = np.asarray(total_volume_mm3, dtype=np.float64) / MM3_PER_CM3
    units = "ln(cm3)/month" if method == "log_ols" else "cm3/month"
    return rate_per_month(days, v_cm3, method=method, units=units)


def monthly_count_rate_of_change(
    days: Sequence[float],
    lesion_count: Sequence[float],
    *,
    method: RateMethod = "ols",
) -> RateOfChange:
    """Monthly rate of change of the lesion count (lesions per month).

    Args:
        days: (N,) float days from baseline.
        lesion_count: (N,) number of lesions at each study.
        method: As :func:`monthly_rate_of_change` (``"log_ols"`` uses ln(count + 1)).

    Returns:
        A :class:`RateOfChange` in ``"lesions/month"`` (``"ln(lesions+1)/month"`` for log).
    """
    units = "ln(lesions+1)/month" if method == "log_ols" else "lesions/month"
    return rate_per_month(days, lesion_count, method=method, units=units, log_epsilon=1.0)
