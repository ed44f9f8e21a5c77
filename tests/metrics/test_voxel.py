"""Voxel metrics: analytic phantoms, empty cases, brute force and MONAI agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metstrack.metrics.voxel import (
    compute_average_surface_distance,
    compute_dice,
    compute_hd95,
    compute_surface_dice,
    compute_voxel_metrics,
    surface_voxels,
)

ANISO = (0.7, 1.1, 2.0)


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels by explicit 6-neighbour checks (independent of scipy's erosion)."""
    pad = np.pad(mask, 1)
    inner = np.ones_like(mask, dtype=bool)
    for ax in range(3):
        for step in (-1, 1):
            inner &= np.roll(pad, step, axis=ax)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def brute_distances(pred, ref, spacing):
    a = brute_surface(pred) * np.asarray(spacing)
    b = brute_surface(ref) * np.asarray(spacing)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


def test_dice_exact_on_cubes():
    p = np.zeros((10, 10, 10), bool)
    r = np.zeros_like(p)
    p[0:4, 0:4, 0:4] = True  # 64 voxels
    r[2:6, 0:4, 0:4] = True  # 64 voxels, overlap 2*4*4 = 32
    assert compute_dice(p, r) == pytest.approx(2 * 32 / 128)


def test_concentric_spheres_distances_anisotropic(make_ball):
    shape = (40, 36, 20)
    c = (14.0, 19.8, 19.0)
    r_big, r_small = 9.0, 6.0
    big = make_ball(shape, c, r_big, ANISO)
    small = make_ball(shape, c, r_small, ANISO)
    vox = np.prod(ANISO)
    m = compute_voxel_metrics(small, big, spacing_mm=ANISO)
    # Volumes are exact voxel counts times the voxel volume, close to the analytic ball.
    assert m.ref_volume_mm3 == pytest.approx(big.sum() * vox)
    assert m.ref_volume_mm3 == pytest.approx(4 / 3 * math.pi * r_big**3, rel=0.05)
    assert m.dice == pytest.approx(2 * small.sum() / (small.sum() + big.sum()))
    # Surfaces are 3 mm apart, up to one voxel diagonal of discretisation.
    tol = float(np.linalg.norm(ANISO))
    assert abs(m.hd95_mm - (r_big - r_small)) <= tol
    assert abs(m.asd_mm - (r_big - r_small)) <= tol
    assert compute_hd95(small, big, spacing_mm=ANISO, percentile=100) <= 3.0 + tol
    assert m.surface_dice == 0.0 or m.surface_dice < 0.2  # 1 mm tolerance << 3 mm gap
    assert compute_surface_dice(small, big, spacing_mm=ANISO, tolerance_mm=3.0 + tol) == 1.0


def test_shifted_single_voxel_distance_uses_spacing():
    p = np.zeros((5, 5, 5), bool)
    r = np.zeros_like(p)
    p[2, 2, 1] = True
    r[2, 2, 3] = True
    assert compute_hd95(p, r, spacing_mm=(1, 1, 3.0)) == pytest.approx(6.0)
    assert compute_average_surface_distance(p, r, spacing_mm=(1, 1, 3.0)) == pytest.approx(6.0)
    assert compute_dice(p, r) == 0.0
    same = compute_voxel_metrics(p, p, spacing_mm=(1, 1, 3.0))
    assert (same.dice, same.hd95_mm, same.asd_mm, same.surface_dice) == (1.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "case,expect",
    [
        ("both", (math.nan, math.nan, math.nan, math.nan)),
        ("pred_empty", (0.0, math.nan, math.nan, 0.0)),
        ("ref_empty", (0.0, math.nan, math.nan, 0.0)),
    ],
)
def test_empty_policy(case, expect):
    full = np.zeros((6, 6, 6), bool)
    full[1:3, 1:3, 1:3] = True
    empty = np.zeros_like(full)
    p, r = {"both": (empty, empty), "pred_empty": (empty, full), "ref_empty": (full, empty)}[case]
    m = compute_voxel_metrics(p, r, spacing_mm=(1, 1, 1))
    got = (m.dice, m.hd95_mm, m.asd_mm, m.surface_dice)
    for g, e in zip(got, expect, strict=True):
        assert (math.isnan(g) and math.isnan(e)) or g == e
    assert compute_dice(p, r) == m.dice or math.isnan(m.dice)


def test_border_voxels_are_surface():
    m = np.ones((3, 3, 3), bool)
    s = surface_voxels(m)
    assert len(s) == 26  # every voxel but the centre
    assert len(brute_surface(m)) == 26


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force(seed, make_blobs):
    rng = np.random.default_rng(seed)
    p = make_blobs(rng, (14, 12, 10), level=0.8, sigma=1.0)
    r = make_blobs(rng, (14, 12, 10), level=0.8, sigma=1.0)
    d_pr, d_rp = brute_distances(p, r, ANISO)
    hd = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    asd = np.concatenate([d_pr, d_rp]).mean()
    nsd = ((d_pr <= 1.5).sum() + (d_rp <= 1.5).sum()) / (len(d_pr) + len(d_rp))
    m = compute_voxel_metrics(p, r, spacing_mm=ANISO, tolerance_mm=1.5)
    assert m.hd95_mm == pytest.approx(hd)
    assert m.asd_mm == pytest.approx(asd)
    assert m.surface_dice == pytest.approx(nsd)
    assert m.dice == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))


@pytest.mark.parametrize("seed", [3, 4])
def test_agrees_with_monai(seed, make_blobs):
    from monai.metrics import (
        DiceMetric,
        compute_hausdorff_distance,
    )
    from monai.metrics import (
        compute_average_surface_distance as monai_asd,
    )
    from monai.metrics import (
        compute_surface_dice as monai_nsd,
    )

    rng = np.random.default_rng(seed)
    p = make_blobs(rng, (24, 20, 16))
    r = make_blobs(rng, (24, 20, 16))

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    yp, y = onehot(p), onehot(r)
    dm = DiceMetric(include_background=False)
    dm(yp, y)
    hd = compute_hausdorff_distance(yp, y, percentile=95, spacing=list(ANISO))
    asd = monai_asd(yp, y, symmetric=True, spacing=list(ANISO))
    nsd = monai_nsd(yp, y, class_thresholds=[2.0], spacing=list(ANISO))
    m = compute_voxel_metrics(p, r, spacing_mm=ANISO, tolerance_mm=2.0)
    assert m.dice == pytest.approx(float(dm.aggregate()), rel=1e-6)
    assert m.hd95_mm == pytest.approx(float(hd), rel=1e-5)
    assert m.asd_mm == pytest.approx(float(asd), rel=1e-5)
    assert m.surface_dice == pytest.approx(float(nsd), rel=1e-5)


def test_bad_inputs():
    a = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        compute_dice(a, np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        compute_hd95(a, a, spacing_mm=(1, 0, 1))
