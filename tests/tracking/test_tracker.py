"""Tracker on hand-built sequences: persist, grow, shrink, vanish, reappear, split, merge."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.config import load_config
from metstrack.core.spatial import rigid_transform
from metstrack.errors import GeometryMismatchError
from metstrack.tracking.config import TrackConfig
from metstrack.tracking.tracker import track_patient
from metstrack.types import Volume

s = np.s_


def test_persist_grow_shrink_statuses(tk):
    # radius 3 (123 vox) -> radius 4 (257: +109%) -> radius 4 -> radius 3.8 (-~15%) -> radius 2
    radii = [3, 4, 4, 3.8, 2]
    masks = [tk.mask(tk.ball((10, 10, 10), r)) for r in radii]
    res = track_patient(masks, [0, 30, 60, 90, 120])
    r = tk.rows(res, 1)
    assert res.n_lesions == 1
    assert list(r["status"]) == ["new", "growing", "stable", "stable", "shrinking"]
    vols = [float(tk.ball((10, 10, 10), rr).sum()) for rr in radii]
    assert np.allclose(r["volume_mm3"], vols)
    for t in range(5):
        assert set(np.unique(res.tracked_maps[t].array)) == {0, 1}


def test_status_thresholds_are_both_relative_and_absolute(tk):
    # 3x3x3 = 27 -> 3x3x4 = 36: +33% but only +9 mm3: growing with min 5, stable with min 10
    masks = [tk.mask(s[5:8, 5:8, 5:8]), tk.mask(s[5:8, 5:8, 5:9])]
    assert tk.rows(track_patient(masks, [0, 1]), 1)["status"].iloc[1] == "growing"
    cfg = load_config(TrackConfig, None, ["status.min_change_mm3=10"])
    assert tk.rows(track_patient(masks, [0, 1], config=cfg), 1)["status"].iloc[1] == "stable"


def test_disappears_and_reappears_after_missed_study(tk):
    a = tk.ball((8, 8, 8), 3)
    b = tk.ball((22, 22, 22), 3)
    masks = [tk.mask(a, b), tk.mask(b), tk.mask(a, b), tk.mask(b)]
    res = track_patient(masks, [0, 50, 100, 150])
    ida = tk.id_at(res, 0, (8, 8, 8))
    assert tk.id_at(res, 2, (8, 8, 8)) == ida  # same ID after the gap
    r = tk.rows(res, ida)
    assert list(r["status"]) == ["new", "resolved", "reappeared", "resolved"]
    assert list(r["present"]) == [True, False, True, False]
    assert r["volume_mm3"].iloc[1] == 0.0
    assert [e.kind for e in res.events] == ["reappear"]
    assert res.burden["resolved_lesions"].tolist() == [0, 1, 0, 1]
    assert res.burden["new_lesions"].tolist() == [0, 0, 0, 0]


def test_lookback_disabled_or_gap_too_long_gives_new_id(tk):
    a = tk.ball((8, 8, 8), 3)
    b = tk.ball((22, 22, 22), 3)
    cfg0 = load_config(TrackConfig, None, ["matching.lookback_studies=0"])
    res = track_patient([tk.mask(a, b), tk.mask(b), tk.mask(a, b)], [0, 1, 2], config=cfg0)
    assert tk.id_at(res, 2, (8, 8, 8)) != tk.id_at(res, 0, (8, 8, 8))
    assert tk.rows(res, tk.id_at(res, 2, (8, 8, 8)))["status"].iloc[0] == "new"
    # default look-back is one study: missing for two studies breaks the identity
    res = track_patient([tk.mask(a, b), tk.mask(b), tk.mask(b), tk.mask(a, b)], [0, 1, 2, 3])
    assert tk.id_at(res, 3, (8, 8, 8)) != tk.id_at(res, 0, (8, 8, 8))
    cfg2 = load_config(TrackConfig, None, ["matching.lookback_studies=2"])
    res = track_patient(
        [tk.mask(a, b), tk.mask(b), tk.mask(b), tk.mask(a, b)], [0, 1, 2, 3], config=cfg2
    )
    assert tk.id_at(res, 3, (8, 8, 8)) == tk.id_at(res, 0, (8, 8, 8))


def test_split_records_parent_and_fragment(tk):
    whole = s[4:20, 8:12, 8:12]
    masks = [tk.mask(whole), tk.mask(s[4:10, 8:12, 8:12], s[13:20, 8:12, 8:12])]
    res = track_patient(masks, [0, 90])
    assert [e.kind for e in res.events] == ["split"]
    parent = tk.id_at(res, 0, (5, 9, 9))
    ids1 = {tk.id_at(res, 1, (5, 9, 9)), tk.id_at(res, 1, (18, 9, 9))}
    assert parent in ids1 and len(ids1) == 2
    (frag,) = ids1 - {parent}
    assert res.split_from == {frag: parent}
    fr = tk.rows(res, frag).iloc[0]
    assert fr["split_from"] == parent and fr["event"] == "split"
    assert fr["status"] != "new"  # a fragment is not a new lesion
    pr = tk.rows(res, parent).iloc[1]
    assert pr["split_into"] == str(frag) and pr["event"] == "split"
    # group volume 256 -> 208 (-19%): stable for both
    assert {pr["status"], fr["status"]} == {"stable"}
    assert res.burden["new_lesions"].tolist() == [0, 0]


def test_merge_records_absorbed_lesion(tk):
    masks = [tk.mask(s[4:10, 8:12, 8:12], s[13:20, 8:12, 8:12]), tk.mask(s[4:20, 8:12, 8:12])]
    res = track_patient(masks, [0, 90])
    assert [e.kind for e in res.events] == ["merge"]
    left, right = tk.id_at(res, 0, (5, 9, 9)), tk.id_at(res, 0, (18, 9, 9))
    kept = tk.id_at(res, 1, (10, 9, 9))
    assert kept in (left, right)
    gone = ({left, right} - {kept}).pop()
    assert res.merged_into == {gone: (1, kept)}
    k = tk.rows(res, kept)
    assert k["merged_from"].iloc[1] == str(gone) and k["event"].iloc[1] == "merge"
    assert k["status"].iloc[1] == "growing"  # 96 + 112 = 208 -> 256 (+23%, +48 mm3)
    g = tk.rows(res, gone)
    assert len(g) == 1 and g["merged_into"].iloc[0] == kept  # no row after the merge
    assert res.burden["resolved_lesions"].tolist() == [0, 0]


def test_new_lesion_next_to_old_one(tk):
    old = tk.ball((12, 12, 12), 3)
    new = tk.ball((12, 12, 19), 2)  # 7 mm away, not touching
    res = track_patient([tk.mask(old), tk.mask(old, new)], [0, 60])
    assert tk.id_at(res, 1, (12, 12, 12)) == tk.id_at(res, 0, (12, 12, 12))
    nid = tk.id_at(res, 1, (12, 12, 19))
    assert nid != tk.id_at(res, 0, (12, 12, 12))
    assert tk.rows(res, nid)["status"].tolist() == ["new"]
    assert res.burden["new_lesions"].tolist() == [0, 1]
    assert res.events == ()


def test_moving_lesion_linked_by_distance_only_within_max(tk):
    a0 = tk.ball((8, 8, 8), 1)
    a1 = tk.ball((8, 8, 14), 1)  # 6 mm shift, no overlap
    res = track_patient([tk.mask(a0), tk.mask(a1)], [0, 1])
    assert res.n_lesions == 1
    cfg = load_config(TrackConfig, None, ["matching.max_distance_mm=5"])
    assert track_patient([tk.mask(a0), tk.mask(a1)], [0, 1], config=cfg).n_lesions == 2


def test_anisotropic_grid_uses_mm(tk):
    aff = tk.affine((1.0, 1.0, 3.0))
    a0 = tk.ball((8, 8, 5), 1)
    a1 = tk.ball((8, 8, 8), 1)  # 3 voxels in z = 9 mm
    res = track_patient([tk.mask(a0, aff=aff), tk.mask(a1, aff=aff)], [0, 1])
    assert res.n_lesions == 1  # 9 mm <= 10 mm
    r = tk.rows(res, 1)
    assert r["volume_mm3"].iloc[0] == pytest.approx(a0.sum() * 3.0)
    assert r["centroid_z_mm"].iloc[1] - r["centroid_z_mm"].iloc[0] == pytest.approx(9.0)
    cfg = load_config(TrackConfig, None, ["matching.max_distance_mm=8"])
    res = track_patient([tk.mask(a0, aff=aff), tk.mask(a1, aff=aff)], [0, 1], config=cfg)
    assert res.n_lesions == 2  # would link on an isotropic 1 mm grid (3 mm)
    iso = track_patient([tk.mask(a0), tk.mask(a1)], [0, 1], config=cfg)
    assert iso.n_lesions == 1


def test_one_study_patient(tk):
    res = track_patient([tk.mask(tk.ball((8, 8, 8), 2), tk.ball((20, 20, 20), 3))], [0])
    assert res.n_lesions == 2
    assert set(res.trajectories["status"]) == {"new"}
    assert len(res.burden) == 1 and res.burden["lesion_count"].iloc[0] == 2
    assert res.events == ()


def test_empty_studies(tk):
    empty = tk.mask()
    res = track_patient([empty, empty], [0, 10])
    assert res.n_lesions == 0 and len(res.trajectories) == 0
    assert res.burden["total_volume_mm3"].tolist() == [0.0, 0.0]
    a = tk.ball((8, 8, 8), 2)
    res = track_patient([tk.mask(a), empty, tk.mask(a)], [0, 10, 20])
    assert tk.rows(res, 1)["status"].tolist() == ["new", "resolved", "reappeared"]


def test_refuses_masks_on_different_grids(tk):
    a = tk.mask(tk.ball((8, 8, 8), 2))
    shifted = Volume(a.array, tk.affine(origin=(2.0, 0.0, 0.0)), path=None)
    with pytest.raises(GeometryMismatchError, match="metstrack preprocess"):
        track_patient([a, shifted], [0, 30])
    other_shape = tk.mask(shape=(30, 32, 32))
    with pytest.raises(GeometryMismatchError, match="co-registered"):
        track_patient([a, other_shape], [0, 30])


def test_native_grids_with_transforms_are_mapped_to_baseline(tk):
    a = tk.ball((12, 12, 12), 3)
    # follow-up anatomy moved by +5 mm in x: baseline point p lies at p + 5 in the study
    moved = tk.ball((17, 12, 12), 3)
    far = tk.ball((25, 25, 25), 2)  # a second lesion, also moved
    far_moved = tk.ball((30, 25, 25), 2)
    t = rigid_transform((0, 0, 0), (5.0, 0, 0))
    masks = [tk.mask(a, far), tk.mask(moved, far_moved)]
    res = track_patient(masks, [0, 30], baseline_to_study=[None, t])
    assert res.n_lesions == 2
    assert tk.id_at(res, 1, (12, 12, 12)) == tk.id_at(res, 0, (12, 12, 12))
    assert res.tracked_maps[1].array[17, 12, 12] == 0  # mapped back by 5 mm
    assert tk.rows(res, 1)["status"].tolist() == ["new", "stable"]
    with pytest.raises(GeometryMismatchError, match="transforms"):
        track_patient(masks, [0, 30], baseline_to_study=[None])


def test_days_must_be_in_order(tk):
    m = tk.mask(tk.ball((8, 8, 8), 2))
    with pytest.raises(ValueError, match="time order"):
        track_patient([m, m], [30, 0])
    with pytest.raises(ValueError, match="days_from_baseline"):
        track_patient([m, m], [0])


def test_tracked_ids_consistent_over_many_lesions(tk, rng):
    centres = [(6, 6, 6), (6, 24, 8), (24, 6, 10), (24, 24, 24), (15, 15, 15)]
    masks = []
    for t in range(4):
        parts = [tk.ball(c, 2 + 0.3 * t * (i % 2)) for i, c in enumerate(centres)]
        masks.append(tk.mask(*parts))
    res = track_patient(masks, [0, 30, 60, 90])
    for c in centres:
        ids = {tk.id_at(res, t, c) for t in range(4)}
        assert len(ids) == 1 and 0 not in ids
    assert res.n_lesions == len(centres)
    assert res.burden["lesion_count"].tolist() == [5, 5, 5, 5]


def test_baseline_grid_parameter_resamples_onto_it(tk):
    from metstrack.core.grid import Grid

    a = tk.ball((12, 12, 12), 4)
    grid = Grid(shape=(16, 16, 16), affine=tk.affine((2.0, 2.0, 2.0)))
    res = track_patient([tk.mask(a), tk.mask(a)], [0, 30], baseline_grid=grid)
    assert res.tracked_maps[0].shape == (16, 16, 16)
    assert res.tracked_maps[1].array[6, 6, 6] == 1  # world (12, 12, 12) mm
    vol = tk.rows(res, 1)["volume_mm3"].iloc[0]
    assert vol == pytest.approx(a.sum(), rel=0.25)  # 8 mm3 voxels approximate the ball


def test_one_good_link_beats_two_poor_ones(tk):
    # single-voxel lesions along x: A moves 1 mm (no overlap), B resolves, N is new 8 mm from A
    prev = tk.mask(np.s_[10:11, 10:11, 10:11], np.s_[4:5, 10:11, 10:11])
    cur = tk.mask(np.s_[11:12, 10:11, 10:11], np.s_[18:19, 10:11, 10:11])
    res = track_patient([prev, cur], [0, 30])
    a, b = tk.id_at(res, 0, (10, 10, 10)), tk.id_at(res, 0, (4, 10, 10))
    assert tk.id_at(res, 1, (11, 10, 10)) == a
    n = tk.id_at(res, 1, (18, 10, 10))
    assert n not in (a, b)
    assert tk.rows(res, b)["status"].tolist() == ["new", "resolved"]
    assert tk.rows(res, n)["status"].tolist() == ["new"]
