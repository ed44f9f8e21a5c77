"""Trajectory and burden tables of a tracked patient.

Trajectory table: one row per lesion ID and study, from the study in which the
lesion is first seen to the patient's last study (a lesion that merged into
another has no rows after the merge). Columns:

``patient_id, lesion_id, study_id, study_index, days_from_baseline,
months_from_baseline, present, volume_mm3, longest_diameter_mm, centroid_x_mm,
centroid_y_mm, centroid_z_mm, status, event, split_from, split_into,
merged_from, merged_into``

Status of a row (thresholds in :class:`~metstrack.tracking.config.StatusConfig`):

- ``new``: first observation of a lesion (every lesion of the baseline study
  is ``new`` too; "new lesion" in the clinical sense is ``new`` with
  ``study_index > 0``).
- ``growing`` / ``shrinking`` / ``stable``: the lesion was present in the
  previous study; its volume changed by at least ``change_fraction`` (20%) and
  ``min_change_mm3`` (5 mm3) up / down, else stable. Split and merge groups
  (a parent and its fragments, coalesced lesions and their sources) compare the
  group's summed volume; a split fragment's first row takes its group's status.
- ``resolved``: the lesion is absent in this study (volume 0).
- ``reappeared``: present again after being missed in up to
  ``lookback_studies`` studies (linked by look-back).

Event columns: ``event`` holds ``split``, ``merge`` and/or ``reappear``
(``+``-joined); ``split_from`` the parent's ID on a fragment's first row;
``split_into`` the fragments' IDs (``;``-joined) on the parent's row of the
split; ``merged_from`` the absorbed IDs on the coalesced lesion's row;
``merged_into`` the coalesced lesion's ID on an absorbed lesion's last row.

Burden table: one row per study with ``lesion_count``, ``total_volume_mm3``,
``total_volume_cm3``, ``sum_longest_diameters_mm``, ``new_lesions`` (first
seen in this study after baseline, split fragments excluded) and
``resolved_lesions``.
"""

from __future__ import annotations

import math

import pandas as pd

from metstrack.core.rate import MM3_PER_CM3, monthly_count_rate_of_change
from metstrack.core.rate import monthly_rate_of_change as _volume_rate
from metstrack.tracking.config import StatusConfig
from metstrack.tracking.records import TrackingResult
from metstrack.types import DAYS_PER_MONTH, Lesion

TRAJECTORY_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "lesion_id",
    "study_id",
    "study_index",
    "days_from_baseline",
    "months_from_baseline",
    "present",
    "volume_mm3",
    "longest_diameter_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "status",
    "event",
    "split_from",
    "split_into",
    "merged_from",
    "merged_into",
)
BURDEN_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "study_id",
    "study_index",
    "days_from_baseline",
    "months_from_baseline",
    "lesion_count",
    "total_volume_mm3",
    "total_volume_cm3",
    "sum_longest_diameters_mm",
    "new_lesions",
    "resolved_lesions",
)
RATE_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "n_studies",
    "span_months",
    "rate_volume_cm3_per_month",
    "rate_count_per_month",
    "method",
    "volume_units",
    "count_units",
    "defined",
    "reason",
)
STATUSES: tuple[str, ...] = ("new", "stable", "growing", "shrinking", "resolved", "reappeared")


def volume_status(prev_mm3: float, cur_mm3: float, cfg: StatusConfig) -> str:
    """``growing``, ``shrinking`` or ``stable`` between two volumes (mm3).

    Both the relative (``>= change_fraction`` of ``prev_mm3``) and the absolute
    (``>= min_change_mm3``) change must be reached; boundaries are inclusive.
    """
    delta = cur_mm3 - prev_mm3
    tol = 1e-9 * max(1.0, prev_mm3)
    rel_ok = abs(delta) >= cfg.change_fraction * prev_mm3 - tol
    abs_ok = abs(delta) >= cfg.min_change_mm3 - tol
    if delta > 0 and rel_ok and abs_ok:
        return "growing"
    if delta < 0 and rel_ok and abs_ok:
        return "shrinking"
    return "stable"


class _Groups:
    """Union-find over (side, lesion ID) nodes."""

    def __init__(self) -> None:
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(self, x: tuple[str, int]) -> tuple[str, int]:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        self.parent[self.find(a)] = self.find(b)


def _group_status(
    t: int,
    prev: dict[int, Lesion],
    cur: dict[int, Lesion],
    result: TrackingResult,
    cfg: StatusConfig,
) -> dict[int, str]:
    g = _Groups()
    for lid in cur:
        g.find(("c", lid))
        if lid in prev:
            g.union(("p", lid), ("c", lid))
    for frag, parent in result.split_from.items():
        if frag in cur and parent in prev and frag not in prev:
            g.union(("p", parent), ("c", frag))
    for src, (tm, target) in result.merged_into.items():
        if tm == t and src in prev and target in cur:
            g.union(("p", src), ("c", target))
    sums: dict[tuple[str, int], list[float]] = {}
    for lid, les in prev.items():
        sums.setdefault(g.find(("p", lid)), [0.0, 0.0])[0] += les.volume_mm3
    for lid, les in cur.items():
        sums.setdefault(g.find(("c", lid)), [0.0, 0.0])[1] += les.volume_mm3
    out: dict[int, str] = {}
    for lid in cur:
        root = g.find(("c", lid))
        has_prev = any(g.find(("p", p)) == root for p in prev)
        if has_prev:
            p_sum, c_sum = sums[root]
            out[lid] = volume_status(p_sum, c_sum, cfg)
    return out


def build_trajectories(result: TrackingResult, *, status: StatusConfig) -> pd.DataFrame:
    """The trajectory table of a tracked patient (see module docs for columns).

    Args:
        result: Output of :func:`metstrack.tracking.tracker.track_patient`.
        status: Growing/shrinking thresholds.

    Returns:
        DataFrame with :data:`TRAJECTORY_COLUMNS`, sorted by lesion ID then study.
    """
    present = [{les.label: les for les in s.lesions} for s in result.study_lesions]
    n = len(present)
    statuses: list[dict[int, str]] = [{} for _ in range(n)]
    for t in range(1, n):
        statuses[t] = _group_status(t, present[t - 1], present[t], result, status)
    split_into: dict[tuple[int, int], list[int]] = {}
    for ev in result.events:
        if ev.kind == "split":
            parent = ev.source_ids[0]
            split_into[(ev.study_index, parent)] = [i for i in ev.target_ids if i != parent]
    merged_from: dict[tuple[int, int], list[int]] = {}
    for src, (tm, target) in result.merged_into.items():
        merged_from.setdefault((tm, target), []).append(src)
    all_ids = sorted({lid for p in present for lid in p})
    rows = []
    for lid in all_ids:
        first = min(t for t in range(n) if lid in present[t])
        end = result.merged_into[lid][0] if lid in result.merged_into else n
        for t in range(first, end):
            les = present[t].get(lid)
            events = []
            if les is None:
                st = "resolved"
            elif (t, lid) in result.reappeared:
                st = "reappeared"
                events.append("reappear")
            elif t == first and lid not in result.split_from:
                st = "new"
            else:
                st = statuses[t].get(lid, "new")
            sf = result.split_from.get(lid) if t == first else None
            si = split_into.get((t, lid), [])
            mf = sorted(merged_from.get((t, lid), []))
            mi = (
                result.merged_into[lid][1] if (lid in result.merged_into and t == end - 1) else None
            )
            if sf is not None or si:
                events.insert(0, "split")
            if mf:
                events.append("merge")
            day = result.days_from_baseline[t]
            c = les.centroid_mm if les is not None else (math.nan,) * 3
            rows.append(
                {
                    "patient_id": result.patient_id,
                    "lesion_id": lid,
                    "study_id": result.study_ids[t],
                    "study_index": t,
                    "days_from_baseline": day,
                    "months_from_baseline": day / DAYS_PER_MONTH,
                    "present": les is not None,
                    "volume_mm3": les.volume_mm3 if les is not None else 0.0,
                    "longest_diameter_mm": les.longest_diameter_mm if les is not None else 0.0,
                    "centroid_x_mm": c[0],
                    "centroid_y_mm": c[1],
                    "centroid_z_mm": c[2],
                    "status": st,
                    "event": "+".join(events),
                    "split_from": sf,
                    "split_into": ";".join(str(i) for i in si),
                    "merged_from": ";".join(str(i) for i in mf),
                    "merged_into": mi,
                }
            )
    df = pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS))
    for col in ("split_from", "merged_into"):
        df[col] = df[col].astype("Int64")
    df["present"] = df["present"].astype(bool)
    return df


def build_burden(result: TrackingResult) -> pd.DataFrame:
    """Per-study burden of a tracked patient (see module docs for columns)."""
    rows = []
    prev_ids: set[int] = set()
    for s in result.study_lesions:
        t = s.study_index
        ids = {les.label for les in s.lesions}
        vol = sum(les.volume_mm3 for les in s.lesions)
        first_seen = set()
        if t > 0:
            earlier = {les.label for e in result.study_lesions[:t] for les in e.lesions}
            first_seen = {i for i in ids - earlier if i not in result.split_from}
        absorbed = {src for src, (tm, _) in result.merged_into.items() if tm == t}
        day = result.days_from_baseline[t]
        rows.append(
            {
                "patient_id": result.patient_id,
                "study_id": result.study_ids[t],
                "study_index": t,
                "days_from_baseline": day,
                "months_from_baseline": day / DAYS_PER_MONTH,
                "lesion_count": len(ids),
                "total_volume_mm3": vol,
                "total_volume_cm3": vol / MM3_PER_CM3,
                "sum_longest_diameters_mm": sum(les.longest_diameter_mm for les in s.lesions),
                "new_lesions": len(first_seen),
                "resolved_lesions": len(prev_ids - ids - absorbed),
            }
        )
        prev_ids = ids
    return pd.DataFrame(rows, columns=list(BURDEN_COLUMNS))


def patient_rates(burden: pd.DataFrame, *, method: str = "ols") -> pd.DataFrame:
    """Monthly rates of change per patient from a burden table.

    Args:
        burden: Rows of :func:`build_burden` for one or more patients.
        method: ``"ols"``, ``"log_ols"`` or ``"first_last"``
            (see :mod:`metstrack.core.rate`).

    Returns:
        One row per patient with :data:`RATE_COLUMNS`; ``defined`` is False and
        the rates NaN (with ``reason``) for one-study patients and for patients
        whose days from baseline are unknown (NaN).
    """
    rows = []
    for pid, g in burden.groupby("patient_id", sort=True):
        if g["days_from_baseline"].isna().any():
            # BraTS-METS names carry no dates: no rate without the intervals.
            rows.append(
                {
                    "patient_id": pid,
                    "n_studies": len(g),
                    "span_months": float("nan"),
                    "rate_volume_cm3_per_month": float("nan"),
                    "rate_count_per_month": float("nan"),
                    "method": method,
                    "volume_units": "",
                    "count_units": "",
                    "defined": False,
                    "reason": "interval between studies unknown; give the days "
                    "(--intervals StudyID,DaysFromBaselineScan table)",
                }
            )
            continue
        g = g.sort_values("days_from_baseline")
        rv = _volume_rate(g["days_from_baseline"], g["total_volume_mm3"], method=method)  # type: ignore[arg-type]
        rc = monthly_count_rate_of_change(g["days_from_baseline"], g["lesion_count"], method=method)  # type: ignore[arg-type]
        rows.append(
            {
                "patient_id": pid,
                "n_studies": rv.n_studies,
                "span_months": rv.span_months,
                "rate_volume_cm3_per_month": rv.value,
                "rate_count_per_month": rc.value,
                "method": method,
                "volume_units": rv.units,
                "count_units": rc.units,
                "defined": rv.defined,
                "reason": rv.reason,
            }
        )
    return pd.DataFrame(rows, columns=list(RATE_COLUMNS))
