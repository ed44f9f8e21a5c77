"""RANO-BM and volumetric categories at each threshold boundary; local control."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.tracking.config import ResponseConfig
from metstrack.tracking.response import (
    assess_response,
    local_control,
    response_category,
    select_targets,
)
from metstrack.tracking.tracker import track_patient
from metstrack.types import RadiosurgeryTarget

CFG = ResponseConfig()


def rano(series, t=None, *, new=False, **kw):
    return response_category(
        series,
        len(series) - 1 if t is None else t,
        new_lesion=new,
        pr_decrease_fraction=CFG.pr_decrease_fraction,
        pd_increase_fraction=CFG.pd_increase_fraction,
        pd_min_increase=CFG.pd_min_increase_mm,
        **kw,
    )


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ([100.0, 70.0], "PR"),  # exactly 30% down: PR (inclusive)
        ([100.0, 70.1], "SD"),  # 29.9% down
        ([100.0, 0.0], "CR"),
        ([40.0, 28.0], "PR"),
        ([50.0, 60.0], "PD"),  # exactly +20% and +10 mm from nadir (baseline)
        ([50.0, 59.9], "SD"),  # +19.8%
        ([20.0, 24.0], "SD"),  # +20% but only +4 mm
        ([25.0, 30.0], "PD"),  # exactly +20% and exactly +5 mm
        ([25.0, 29.99], "SD"),
        ([10.0, 15.0], "PD"),  # +50%, +5 mm
        ([100.0, 50.0, 60.0], "PD"),  # nadir 50: +20%, +10 mm (still below baseline)
        ([100.0, 50.0, 59.0], "PR"),  # nadir 50: +18%; 41% below baseline
        ([100.0, 50.0, 75.0], "PD"),
        ([20.0, 0.0, 5.0], "PD"),  # a target back after CR: +5 mm from a nadir of 0
        ([20.0, 0.0, 4.0], "PR"),  # +4 mm from 0 is not PD; 80% below baseline
        ([20.0, 0.0, 0.0], "CR"),
        ([30.0, 30.0], "SD"),
    ],
)
def test_rano_bm_boundaries(series, expected):
    assert rano(series) == expected


def test_new_lesion_is_progression_and_blocks_cr():
    assert rano([100.0, 0.0], new=True) == "PD"
    assert rano([100.0, 50.0], new=True) == "PD"


def test_cr_needs_every_lesion_gone():
    assert rano([100.0, 0.0], any_lesion_present=True) == "PR"  # a non-target remains
    assert rano([100.0, 0.0], any_lesion_present=False) == "CR"


def test_patient_without_targets():
    assert rano([0.0, 0.0], has_targets=False, any_lesion_present=True) == "SD"
    assert rano([0.0, 0.0], has_targets=False, any_lesion_present=False) == "CR"
    assert rano([0.0, 0.0], new=True, has_targets=False) == "PD"


def test_volumetric_thresholds_are_cubes_of_the_1d_ones():
    assert CFG.vol_pr_decrease_fraction == pytest.approx(0.657)
    assert CFG.vol_pd_increase_fraction == pytest.approx(0.728)
    assert CFG.vol_pd_min_increase_mm3 == pytest.approx(65.45, abs=0.01)

    def vol(series):
        return response_category(
            series,
            len(series) - 1,
            new_lesion=False,
            pr_decrease_fraction=CFG.vol_pr_decrease_fraction,
            pd_increase_fraction=CFG.vol_pd_increase_fraction,
            pd_min_increase=CFG.vol_pd_min_increase_mm3,
        )

    assert vol([1000.0, 343.0]) == "PR"  # 0.7^3
    assert vol([1000.0, 344.0]) == "SD"
    assert vol([1000.0, 1728.0]) == "PD"  # 1.2^3
    assert vol([1000.0, 1727.0]) == "SD"
    assert vol([50.0, 100.0]) == "SD"  # +100% but only +50 mm3 (< 65.45)


def test_response_index_must_be_a_follow_up():
    with pytest.raises(ValueError, match="follow-up"):
        rano([10.0, 5.0], t=0)


def _box(tk, x0, length, width=4):
    return np.s_[x0 : x0 + length, 8 : 8 + width, 8 : 8 + width]


def test_assess_response_on_tracked_sequence(tk):
    # two targets along x (16 mm and 12 mm long bars) and one small non-target
    big = [16, 16, 8, 8, 8]
    mid = [12, 12, 6, 6, 6]
    masks = []
    for t in range(5):
        parts = [_box(tk, 2, big[t]), np.s_[2 : 2 + mid[t], 20:24, 8:12], tk.ball((24, 24, 24), 1)]
        if t == 4:
            parts.append(tk.ball((24, 6, 24), 1))  # new lesion
        masks.append(tk.mask(*parts))
    res = track_patient(masks, [0, 60, 120, 180, 240])
    targets = select_targets(res, config=CFG)
    assert len(targets) == 2
    resp = assess_response(res, config=CFG)
    assert resp["rano_bm"].tolist() == ["SD", "PR", "PR", "PD"]
    assert resp["new_lesions"].tolist() == [0, 0, 0, 1]
    assert resp["n_targets"].iloc[0] == 2
    assert resp["volumetric"].tolist()[-1] == "PD"
    sod0 = resp["baseline_sum_diameters_mm"].iloc[0]
    assert sod0 == pytest.approx(np.hypot(np.hypot(15, 3), 3) + np.hypot(np.hypot(11, 3), 3))


def test_target_selection_keeps_five_largest(tk):
    parts = [np.s_[2:14, 2 + 5 * i : 4 + 5 * i, 2:4] for i in range(6)]
    parts.append(np.s_[20:30, 2:4, 20:22])  # 9 voxel-centre span: 9.x mm, not a target
    res = track_patient([tk.mask(*parts)], [0])
    assert len(select_targets(res, config=CFG)) == 5
    assert assess_response(res, config=CFG).empty  # one study: no follow-up


def test_local_control_matches_targets_and_flags_failure(tk):
    a = [2, 2, 3, 4]  # treated lesion grows after treatment at study 1
    b = [3, 3, 2, 2]
    masks = [tk.mask(tk.ball((8, 8, 8), a[t]), tk.ball((22, 22, 22), b[t])) for t in range(4)]
    res = track_patient(masks, [0, 30, 90, 150], study_ids=["s0", "s1", "s2", "s3"])
    targets = [
        RadiosurgeryTarget("patient", 1, "s1", 0.0, 33.0, 20.0, (8.5, 8.0, 8.0)),
        RadiosurgeryTarget("patient", 2, "s1", 0.0, 123.0, 20.0, (22.0, 21.0, 22.0)),
        RadiosurgeryTarget("patient", 3, "s1", 0.0, 1.0, 20.0, (0.0, 30.0, 0.0)),
        RadiosurgeryTarget("other", 1, "s1", 0.0, 1.0, 20.0, (8.0, 8.0, 8.0)),
    ]
    lc = local_control(res, targets, config=CFG).set_index("target_id")
    assert len(lc) == 3
    assert bool(lc.loc[1, "matched"]) and lc.loc[1, "lesion_id"] == tk.id_at(res, 0, (8, 8, 8))
    assert bool(lc.loc[1, "local_failure"]) and lc.loc[1, "failure_study_id"] == "s2"
    assert lc.loc[1, "days_to_failure"] == 60.0 and lc.loc[1, "followup_days"] == 120.0
    assert bool(lc.loc[2, "matched"]) and not bool(lc.loc[2, "local_failure"])
    assert not bool(lc.loc[3, "matched"]) and "mm away" in lc.loc[3, "reason"]
    # a transform maps the planning-study centroid back to the baseline grid
    t = np.eye(4)
    t[:3, 3] = (5.0, 0.0, 0.0)
    moved = [RadiosurgeryTarget("patient", 1, "s1", 0.0, 33.0, 20.0, (13.0, 8.0, 8.0))]
    lc2 = local_control(res, moved, config=CFG, baseline_to_study={"s1": t})
    assert lc2["match_distance_mm"].iloc[0] == pytest.approx(0.0, abs=1e-6)
