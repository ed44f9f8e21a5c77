"""Registration recovers known rigid transforms (residual under 1 mm), deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.core.spatial import (
    grid_centre_mm,
    resample_array,
    rigid_transform,
    voxel_to_world,
)
from metstrack.errors import ConfigError, InvalidImageError
from metstrack.preprocess.register import (
    RegistrationConfig,
    from_sitk,
    ras_to_sitk_affine,
    register,
    residual_mm,
    sitk_transform_to_ras,
    to_sitk,
)
from metstrack.types import Volume

FAST = RegistrationConfig(
    shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 0.0), iterations=100, sampling_percentage=0.25
)


def _moved(vol: Volume, baseline_to_study: np.ndarray, *, shape=None, affine=None) -> Volume:
    """The follow-up scan: anatomy at baseline point p appears at baseline_to_study(p)."""
    shape = shape or vol.shape
    affine = vol.affine if affine is None else affine
    arr = resample_array(
        vol.array, vol.affine, shape, affine, transform=np.linalg.inv(baseline_to_study), order=3
    )
    return Volume(array=arr, affine=np.array(affine, copy=True))


def _brain_points(vol: Volume, brain: np.ndarray) -> np.ndarray:
    return voxel_to_world(np.argwhere(brain), vol.affine)


def test_sitk_round_trip_keeps_geometry(head):
    vol, _ = head(n=16)
    aff = vol.affine.copy()
    aff[:3, :3] = aff[:3, :3] @ np.diag([-1, 1, 1])  # a flipped axis survives the LPS trip
    v = Volume(array=vol.array, affine=aff)
    back = from_sitk(to_sitk(v))
    assert np.allclose(back.affine, aff)
    assert np.array_equal(back.array, v.array)
    t = rigid_transform((3, -2, 5), (1, 2, 3), center_mm=(10, 0, -5))
    assert np.allclose(sitk_transform_to_ras(ras_to_sitk_affine(t)), t)


def test_rigid_registration_recovers_known_transform(head):
    fixed, brain = head(n=40, spacing_mm=2.0)
    centre = grid_centre_mm(fixed.shape, fixed.affine)
    truth = rigid_transform(
        (6.0, -4.0, 5.0), (4.0, -3.0, 2.5), center_mm=tuple(centre + [6, 0, -4])
    )
    moving = _moved(fixed, truth)
    before = np.median(residual_mm(np.eye(4), truth, _brain_points(fixed, brain)))
    res = register(fixed, moving, FAST)
    err = residual_mm(res.transform, truth, _brain_points(fixed, brain))
    assert before > 5.0
    assert np.median(err) < 1.0, f"median residual {np.median(err):.2f} mm"
    assert res.stages == ("rigid",)


def test_registration_reruns_are_identical(head):
    fixed, _ = head(n=32, spacing_mm=2.5)
    truth = rigid_transform((3.0, 2.0, -4.0), (2.0, 1.0, -2.0))
    moving = _moved(fixed, truth)
    a = register(fixed, moving, FAST)
    b = register(fixed, moving, FAST)
    assert np.array_equal(a.transform, b.transform)


def test_within_study_multimodal_with_initial_transform(head):
    """A T2-like sequence moved relative to the study's CT1, on its own anisotropic grid."""
    ct1, brain = head(n=40, spacing_mm=2.0)
    t2, _ = head(n=40, spacing_mm=2.0, contrast="t2")
    b2s = rigid_transform((2.0, 0.0, 3.0), (1.0, -2.0, 0.0))  # study CT1 vs baseline
    motion = rigid_transform((0.0, 4.0, -3.0), (-2.0, 3.0, 1.5))  # patient moved between sequences
    aniso = np.diag([1.6, 1.6, 4.0, 1.0])
    aniso[:3, 3] = [-32.0, -32.0, -40.0]
    t2_native = _moved(t2, motion @ b2s, shape=(40, 40, 20), affine=aniso)
    cfg = RegistrationConfig(shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 0.0), iterations=100)
    res = register(ct1, t2_native, cfg, initial=b2s)
    err = residual_mm(res.transform, motion @ b2s, _brain_points(ct1, brain))
    assert np.median(err) < 1.0, f"median residual {np.median(err):.2f} mm"


def test_affine_stage_runs_and_stays_accurate(head):
    fixed, brain = head(n=32, spacing_mm=2.5)
    truth = rigid_transform((4.0, 0.0, -3.0), (3.0, 0.0, 1.0))
    cfg = RegistrationConfig(
        shrink_factors=(2, 1),
        smoothing_sigmas_mm=(2.0, 0.0),
        iterations=80,
        affine=True,
        affine_iterations=30,
        init="moments",
    )
    res = register(fixed, _moved(fixed, truth), cfg)
    assert res.stages == ("rigid", "affine")
    assert np.median(residual_mm(res.transform, truth, _brain_points(fixed, brain))) < 1.0


def test_bad_inputs_raise_typed_errors(head):
    vol, _ = head(n=16)
    flat = Volume(array=np.zeros((16, 16, 16), np.float32), affine=vol.affine)
    with pytest.raises(InvalidImageError, match="constant"):
        register(vol, flat)
    with pytest.raises(ConfigError, match="smoothing_sigmas_mm"):
        RegistrationConfig(shrink_factors=(4, 2), smoothing_sigmas_mm=(1.0,))
    with pytest.raises(ConfigError, match="identity, geometry, moments"):
        RegistrationConfig(init="centre")


def _nmi(x: np.ndarray, y: np.ndarray, bins: int = 32) -> float:
    """Normalised mutual information (H(x) + H(y)) / H(x, y), an independent check."""
    h, _, _ = np.histogram2d(x, y, bins=bins)
    p = h / h.sum()

    def ent(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (ent(p.sum(1)) + ent(p.sum(0))) / ent(p)


@pytest.mark.realdata
def test_within_study_registration_on_real_oblique_skull_on_study(realdata):
    """TCGA-FG-6692: T2 (own oblique 5.5 mm grid) onto the T1 post; then the same T2 moved
    by a known rigid motion must give the same answer composed with that motion."""
    from metstrack.io.nifti import read_volume

    folder = realdata / "tcga-fg-6692-raw"
    t1c = read_volume(folder / "t1c.nii.gz")
    t2 = read_volume(folder / "t2.nii.gz")
    brain = read_volume(folder / "t1c_brainmask_hdbet.nii.gz").array > 0
    pts = voxel_to_world(np.argwhere(brain), t1c.affine)
    cfg = RegistrationConfig(
        shrink_factors=(4, 2),
        smoothing_sigmas_mm=(4.0, 2.0),
        iterations=80,
        sampling_percentage=0.1,
    )
    a = register(t1c, t2, cfg)

    def on_t1c(t):
        r = resample_array(t2.array, t2.affine, t1c.shape, t1c.affine, transform=t, order=1)
        return _nmi(t1c.array[brain], r[brain])

    assert on_t1c(a.transform) > on_t1c(np.eye(4)) + 0.02
    motion = rigid_transform((4.0, -3.0, 5.0), (3.0, -2.0, 2.0), center_mm=tuple(pts.mean(0)))
    moved = _moved(t2, motion)
    b = register(t1c, moved, cfg)
    err = residual_mm(b.transform, motion @ a.transform, pts)
    assert np.median(err) < 1.5, f"median residual {np.median(err):.2f} mm"
