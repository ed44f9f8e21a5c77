"""Response assessment per follow-up (RANO-BM and volumetric) and local control.

RANO-BM as implemented (Lin et al., Lancet Oncol 2015; imaging part only,
steroid use and clinical status are out of scope):

- Target lesions: up to ``max_targets`` (5) lesions present at baseline with a
  longest diameter of at least ``min_target_diameter_mm`` (10 mm), the largest
  first (ties: lower lesion ID). A target's *lineage* follows it through
  splits (its fragments add their diameters) and merges (the coalesced lesion
  counts once); an absent target contributes 0 mm.
- ``SoD_t``: sum of the longest diameters of the target lineages at study t.
  ``nadir_t``: the smallest SoD among baseline and the follow-ups before t.
- New lesion at t: a lesion first seen at t (status ``new``, t > 0; split
  fragments are not new) with a longest diameter of at least
  ``new_lesion_min_diameter_mm`` (default 0: any new lesion).
- Category of follow-up t, the first rule that applies:

  1. **PD** if a new lesion appeared, or ``SoD_t - nadir_t >= 0.20 * nadir_t``
     and ``SoD_t - nadir_t >= 5 mm``;
  2. **CR** if every target lineage is absent (``SoD_t == 0``) and no other
     lesion (non-target, or new at an earlier follow-up) is present either;
  3. **PR** if ``SoD_t <= (1 - 0.30) * SoD_0`` (a decrease of at least 30%;
     targets gone while other lesions remain is therefore PR);
  4. **SD** otherwise.

  Every follow-up is assessed on its own against baseline and nadir (a PD
  does not end the assessment, so later rows show what happened next).

  Boundaries are inclusive (exactly 30% down is PR, exactly 20% and 5 mm up is
  PD), compared with a relative tolerance of 1e-9 so that floating-point sums
  do not flip a boundary case. A patient without target lesions is CR when no
  lesion is present and none is new, PD on a new lesion, SD otherwise.

Volumetric counterpart: the same targets and rules on the sum of the target
lineages' volumes, with the thresholds a sphere's volume takes when its
diameter crosses the 1D thresholds: ``(1 - 0.30)^3 = 0.343`` (PR at a volume
decrease of at least 65.7%) and ``(1 + 0.20)^3 = 1.728`` (PD at an increase
from the nadir of at least 72.8%), with the absolute minimum increase the
volume of a 5 mm sphere, ``4/3 pi 2.5^3 = 65.45 mm3``.

Local control after radiosurgery: each treatment target (centroid in mm, in
its planning study's world space; mapped to the baseline grid with the
study's inverse ``baseline_to_study`` when transforms are known) is matched to
the nearest lesion present in the planning study within
``target_match_distance_mm``. Local failure is the first later study in which
that lesion (with any fragments split from it) has grown by at least
``local_failure_fraction`` (20%) and ``local_failure_min_mm3`` (5 mm3) over its
volume at treatment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from metstrack.tracking.config import ResponseConfig
from metstrack.tracking.records import TrackingResult
from metstrack.types import RadiosurgeryTarget

RESPONSE_CATEGORIES: tuple[str, ...] = ("CR", "PR", "SD", "PD")
RESPONSE_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "study_id",
    "study_index",
    "days_from_baseline",
    "n_targets",
    "target_ids",
    "sum_diameters_mm",
    "baseline_sum_diameters_mm",
    "nadir_sum_diameters_mm",
    "change_from_baseline_fraction",
    "change_from_nadir_mm",
    "new_lesions",
    "rano_bm",
    "target_volume_mm3",
    "baseline_target_volume_mm3",
    "nadir_target_volume_mm3",
    "volumetric",
)
LOCAL_CONTROL_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "target_id",
    "planning_study_id",
    "matched",
    "lesion_id",
    "match_distance_mm",
    "volume_at_treatment_mm3",
    "local_failure",
    "failure_study_id",
    "days_to_failure",
    "followup_days",
    "reason",
)
_REL_TOL = 1e-9


def _ge(a: float, b: float) -> bool:
    """``a >= b`` with a relative tolerance (boundary cases count as reached)."""
    return a >= b - _REL_TOL * max(1.0, abs(a), abs(b))


def response_category(
    series: Sequence[float],
    t: int,
    *,
    new_lesion: bool,
    pr_decrease_fraction: float,
    pd_increase_fraction: float,
    pd_min_increase: float,
    has_targets: bool = True,
    any_lesion_present: bool | None = None,
) -> str:
    """Response category of follow-up ``t`` from a target-burden series.

    Args:
        series: (N,) sums over the target lesions (diameters in mm for RANO-BM,
            volumes in mm3 for the volumetric version); ``series[0]`` is baseline.
        t: Index of the follow-up (>= 1).
        new_lesion: A qualifying new lesion appeared at ``t``.
        pr_decrease_fraction: PR at a decrease from baseline of at least this.
        pd_increase_fraction: PD at an increase from the nadir of at least this ...
        pd_min_increase: ... and at least this absolute amount (series units).
        has_targets: False when the patient had no target lesion at baseline.
        any_lesion_present: Any lesion (target or not) present at ``t``
            (default: ``series[t] > 0``); CR needs none.

    Returns:
        ``"CR"``, ``"PR"``, ``"SD"`` or ``"PD"`` (rules in the module docs).
    """
    if t < 1 or t >= len(series):
        raise ValueError(f"follow-up index {t} outside 1..{len(series) - 1}")
    if new_lesion:
        return "PD"
    if any_lesion_present is None:
        any_lesion_present = float(series[t]) > 0
    if not has_targets:
        return "SD" if any_lesion_present else "CR"
    cur = float(series[t])
    base = float(series[0])
    nadir = float(min(series[:t]))
    inc = cur - nadir
    if inc > 0 and _ge(inc, pd_increase_fraction * nadir) and _ge(inc, pd_min_increase):
        return "PD"
    if cur <= _REL_TOL * max(1.0, base) and not any_lesion_present:
        return "CR"
    if _ge(base - cur, pr_decrease_fraction * base):
        return "PR"
    return "SD"


def select_targets(result: TrackingResult, *, config: ResponseConfig) -> tuple[int, ...]:
    """RANO-BM target lesion IDs at baseline (largest diameters first, at most ``max_targets``)."""
    if not result.study_lesions:
        return ()
    base = [
        les
        for les in result.study_lesions[0].lesions
        if _ge(les.longest_diameter_mm, config.min_target_diameter_mm)
    ]
    base.sort(key=lambda les: (-les.longest_diameter_mm, les.label))
    return tuple(les.label for les in base[: config.max_targets])


def _lineage_members(result: TrackingResult, targets: Sequence[int]) -> list[set[int]]:
    """Per study, the lesion IDs that belong to a target lineage (splits and merges followed)."""
    member = set(targets)
    out: list[set[int]] = []
    for s in result.study_lesions:
        t = s.study_index
        for les in s.lesions:
            if result.split_from.get(les.label) in member:
                member.add(les.label)
        for src, (tm, dst) in result.merged_into.items():
            if tm == t and src in member:
                member.add(dst)
        out.append(set(member))
    return out


def assess_response(result: TrackingResult, *, config: ResponseConfig) -> pd.DataFrame:
    """RANO-BM and volumetric response of every follow-up of a tracked patient.

    Args:
        result: Output of :func:`~metstrack.tracking.tracker.track_patient`.
        config: Thresholds (see module docs).

    Returns:
        One row per follow-up study (the baseline has none) with
        :data:`RESPONSE_COLUMNS`; empty for a one-study patient.
    """
    targets = select_targets(result, config=config)
    members = _lineage_members(result, targets)
    sod, vol = [], []
    for s, mem in zip(result.study_lesions, members, strict=True):
        sod.append(sum(les.longest_diameter_mm for les in s.lesions if les.label in mem))
        vol.append(sum(les.volume_mm3 for les in s.lesions if les.label in mem))
    traj = result.trajectories
    rows = []
    for t in range(1, len(result.study_lesions)):
        new = 0
        if len(traj):
            sel = traj[
                (traj["study_index"] == t)
                & (traj["status"] == "new")
                & (traj["longest_diameter_mm"] >= config.new_lesion_min_diameter_mm - 1e-9)
            ]
            new = len(sel)
        present = len(result.study_lesions[t].lesions) > 0
        common = dict(new_lesion=new > 0, has_targets=bool(targets), any_lesion_present=present)
        rano = response_category(
            sod,
            t,
            pr_decrease_fraction=config.pr_decrease_fraction,
            pd_increase_fraction=config.pd_increase_fraction,
            pd_min_increase=config.pd_min_increase_mm,
            **common,
        )
        volu = response_category(
            vol,
            t,
            pr_decrease_fraction=config.vol_pr_decrease_fraction,
            pd_increase_fraction=config.vol_pd_increase_fraction,
            pd_min_increase=config.vol_pd_min_increase_mm3,
            **common,
        )
        rows.append(
            {
                "patient_id": result.patient_id,
                "study_id": result.study_ids[t],
                "study_index": t,
                "days_from_baseline": result.days_from_baseline[t],
                "n_targets": len(targets),
                "target_ids": ";".join(str(i) for i in targets),
                "sum_diameters_mm": sod[t],
                "baseline_sum_diameters_mm": sod[0],
                "nadir_sum_diameters_mm": min(sod[:t]),
                "change_from_baseline_fraction": (sod[t] - sod[0]) / sod[0] if sod[0] else np.nan,
                "change_from_nadir_mm": sod[t] - min(sod[:t]),
                "new_lesions": new,
                "rano_bm": rano,
                "target_volume_mm3": vol[t],
                "baseline_target_volume_mm3": vol[0],
                "nadir_target_volume_mm3": min(vol[:t]),
                "volumetric": volu,
            }
        )
    return pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))


def local_control(
    result: TrackingResult,
    targets: Sequence[RadiosurgeryTarget],
    *,
    config: ResponseConfig,
    baseline_to_study: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Per-target local control after radiosurgery.

    Args:
        result: A tracked patient (maps on the baseline grid).
        targets: Radiosurgery targets of this patient (others are ignored).
        config: Matching distance and local-failure thresholds.
        baseline_to_study: StudyID -> 4x4 transform (baseline world -> study
            world). When given, a target centroid (planning-study world, mm) is
            mapped to the baseline as ``inv(T) @ c``; otherwise the centroids are
            taken to be in the baseline's world already.

    Returns:
        One row per target with :data:`LOCAL_CONTROL_COLUMNS`.
    """
    rows = []
    index = {sid: i for i, sid in enumerate(result.study_ids)}
    for tg in targets:
        if tg.patient_id != result.patient_id:
            continue
        row = {
            "patient_id": result.patient_id,
            "target_id": tg.target_id,
            "planning_study_id": tg.study_id,
            "matched": False,
            "lesion_id": pd.NA,
            "match_distance_mm": np.nan,
            "volume_at_treatment_mm3": np.nan,
            "local_failure": False,
            "failure_study_id": "",
            "days_to_failure": np.nan,
            "followup_days": np.nan,
            "reason": "",
        }
        rows.append(row)
        t = index.get(tg.study_id)
        if t is None:
            row["reason"] = "planning study not among the tracked studies"
            continue
        c = np.array([*tg.centroid_mm, 1.0])
        if baseline_to_study is not None and tg.study_id in baseline_to_study:
            c = np.linalg.inv(np.asarray(baseline_to_study[tg.study_id], np.float64)) @ c
        lesions = result.study_lesions[t].lesions
        if not lesions:
            row["reason"] = "no lesion in the planning study"
            continue
        d = [float(np.linalg.norm(np.array(les.centroid_mm) - c[:3])) for les in lesions]
        k = int(np.argmin(d))
        if d[k] > config.target_match_distance_mm:
            row["reason"] = (
                f"nearest lesion {d[k]:.1f} mm away (limit {config.target_match_distance_mm} mm)"
            )
            row["match_distance_mm"] = d[k]
            continue
        lid = lesions[k].label
        family = {lid}
        v0 = lesions[k].volume_mm3
        row.update(matched=True, lesion_id=lid, match_distance_mm=d[k], volume_at_treatment_mm3=v0)
        day0 = result.days_from_baseline[t]
        row["followup_days"] = result.days_from_baseline[-1] - day0
        for u in range(t + 1, len(result.study_lesions)):
            family |= {f for f, p in result.split_from.items() if p in family}
            v = sum(
                les.volume_mm3 for les in result.study_lesions[u].lesions if les.label in family
            )
            if _ge(v - v0, config.local_failure_fraction * v0) and _ge(
                v - v0, config.local_failure_min_mm3
            ):
                row.update(
                    local_failure=True,
                    failure_study_id=result.study_ids[u],
                    days_to_failure=result.days_from_baseline[u] - day0,
                )
                break
    df = pd.DataFrame(rows, columns=list(LOCAL_CONTROL_COLUMNS))
    df["lesion_id"] = df["lesion_id"].astype("Int64")
    return df
