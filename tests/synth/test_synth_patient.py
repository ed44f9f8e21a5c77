"""In-memory patients: determinism, contrasts, motion, lesion identity and vessels.

Most checks run on both anatomies (the MNI template and the procedural phantom)
with every study on the baseline grid (``acquisition="fixed"``), so arrays can
be compared voxel for voxel; ``test_synth_realism.py`` covers the clinical
acquisition and the realism statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from metstrack.core.lesions import lesion_table
from metstrack.core.spatial import rotation_angle_deg
from metstrack.synth import anatomy as tissue
from metstrack.synth.cohort import make_patient
from metstrack.synth.config import SynthConfig

FIXED = SynthConfig(acquisition="fixed")
PHANTOM = SynthConfig(anatomy="phantom", acquisition="fixed")


@pytest.fixture(scope="module", params=["template", "phantom"])
def anatomy_config(request) -> SynthConfig:
    return SynthConfig(anatomy=request.param, acquisition="fixed")


@pytest.fixture(scope="module")
def patient(anatomy_config):
    return make_patient(seed=3, shape=48, n_studies=3, config=anatomy_config)


def test_same_seed_same_arrays_different_seed_differs(patient, anatomy_config):
    again = make_patient(seed=3, shape=48, n_studies=3, config=anatomy_config)
    other = make_patient(seed=4, shape=48, n_studies=3, config=anatomy_config)
    for a, b in zip(patient.studies, again.studies, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.instances, b.instances)
        np.testing.assert_array_equal(a.baseline_to_study, b.baseline_to_study)
    assert not np.array_equal(patient.studies[0].images, other.studies[0].images)


def test_patient_does_not_depend_on_cohort_index_of_others():
    first = make_patient(seed=9, shape=48, n_studies=2, index=1, config=FIXED)
    second = make_patient(seed=9, shape=48, n_studies=2, index=1, config=FIXED)
    zeroth = make_patient(seed=9, shape=48, n_studies=2, index=0, config=FIXED)
    np.testing.assert_array_equal(first.studies[1].images, second.studies[1].images)
    assert not np.array_equal(first.studies[0].images, zeroth.studies[0].images)


def test_shapes_dtypes_and_grid(patient):
    assert len(patient.studies) == 3
    for st in patient.studies:
        assert st.images.shape == (4, 48, 48, 48) and st.images.dtype == np.float32
        assert st.instances.shape == (48, 48, 48) and st.instances.dtype == np.int16
        assert np.all(np.isfinite(st.images)) and st.images.min() >= 0
    np.testing.assert_allclose(patient.affine[:3, :3], np.eye(3))
    centre = patient.affine[:3, :3] @ np.full(3, 23.5) + patient.affine[:3, 3]
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    assert patient.studies[0].days_from_baseline == 0
    days = [s.days_from_baseline for s in patient.studies]
    assert days == sorted(days) and len(set(days)) == 3


def test_relative_contrasts_on_baseline(patient):
    st = patient.studies[0]
    lab = patient.tissues
    clean = (st.instances == 0) & ~st.vessel_mask

    def mean(mod, tissue):
        return float(st.image(mod)[(lab == tissue) & clean].mean())

    assert mean("T1", tissue.WM) > mean("T1", tissue.GM) > mean("T1", tissue.VENTRICLE)
    assert mean("CT1", tissue.WM) > mean("CT1", tissue.GM) > mean("CT1", tissue.VENTRICLE)
    assert mean("T2", tissue.VENTRICLE) > mean("T2", tissue.GM) > mean("T2", tissue.WM)
    assert mean("FLAIR", tissue.GM) > mean("FLAIR", tissue.WM) > mean("FLAIR", tissue.VENTRICLE)
    assert mean("T1", tissue.BONE) < mean("T1", tissue.SCALP)


@pytest.mark.parametrize("config", [FIXED, PHANTOM], ids=["template", "phantom"])
def test_lesions_enhance_on_ct1(config):
    for seed in range(10):
        p = make_patient(seed=seed, shape=64, n_studies=2, config=config)
        st = p.studies[0]
        les = st.instances > 0
        if les.sum() >= 30:
            break
    assert les.sum() >= 30, "no seed gave a patient with 30 lesion voxels"
    wm = (p.tissues == tissue.WM) & ~les
    # Solid enhancement: the brightest lesion voxels clearly exceed white matter.
    assert np.percentile(st.image("CT1")[les], 90) > 1.3 * st.image("CT1")[wm].mean()
    assert np.percentile(st.image("T1")[les], 90) < 1.1 * st.image("T1")[wm].mean()


def test_motion_within_bounds_and_baseline_identity():
    cfg = SynthConfig(motion_max_deg=4.0, motion_max_mm=2.0, acquisition="fixed")
    p = make_patient(seed=1, shape=48, n_studies=4, config=cfg)
    np.testing.assert_array_equal(p.studies[0].baseline_to_study, np.eye(4))
    for st in p.studies[1:]:
        t = st.baseline_to_study
        np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-12)
        assert 0 < rotation_angle_deg(t) <= 4.0 + 1e-9
        assert np.linalg.norm(t[:3, 3]) <= 2.0 + 1e-9
    still = make_patient(
        seed=1,
        shape=48,
        n_studies=3,
        config=SynthConfig(motion_max_deg=0, motion_max_mm=0, acquisition="fixed"),
    )
    for st in still.studies:
        np.testing.assert_allclose(st.baseline_to_study, np.eye(4))


def _find_stable_lesion():
    """(patient, lesion id, study index): a lesion of >= 30 voxels whose volume changes
    by under 15% between the baseline and the planning scan a few days later."""
    for seed in range(20):
        p = make_patient(seed=seed, shape=48, n_studies=2, config=FIXED)
        v = np.stack([s.lesion_volume_mm3 for s in p.studies], axis=1)
        ok = (v[:, 0] >= 30) & (np.abs(v[:, 1] - v[:, 0]) <= 0.15 * v[:, 0])
        if ok.any() and np.linalg.norm(p.studies[1].baseline_to_study[:3, 3]) > 1.0:
            return p, int(np.flatnonzero(ok)[0]) + 1, 1
    raise AssertionError("no stable lesion found in 20 seeds")


def test_lesion_identity_follows_the_transform():
    p, lid, j = _find_stable_lesion()
    base, fu = p.studies[0], p.studies[j]
    c0 = {les.label: les for les in lesion_table(None, p.affine, labels=base.instances)}[lid]
    c1 = {les.label: les for les in lesion_table(None, p.affine, labels=fu.instances)}[lid]
    t = fu.baseline_to_study
    expected = t[:3, :3] @ np.asarray(c0.centroid_mm) + t[:3, 3]
    assert np.linalg.norm(np.asarray(c1.centroid_mm) - expected) < 1.0
    # The planted centre moves the same way.
    centre = p.geometry.centres_mm[lid - 1]
    assert np.linalg.norm(np.asarray(c0.centroid_mm) - centre) < 1.0


def test_phantom_vessels_persist_enhance_and_are_never_labelled():
    p = make_patient(seed=2, shape=64, n_studies=3, config=PHANTOM)
    assert len(p.geometry.vessel_radius_mm) >= 3
    counts = []
    for st in p.studies:
        assert st.vessel_mask.any()
        assert not np.any(st.vessel_mask & (st.instances > 0))
        wm = (st.instances == 0) & ~st.vessel_mask & (st.images[1] > 0)
        ct1 = st.image("CT1")
        assert ct1[st.vessel_mask].mean() > 1.2 * np.percentile(ct1[wm], 90)
        counts.append(int(st.vessel_mask.sum()))
        # Each vessel's midpoint, moved with the head, is inside the vessel mask.
        mids = (p.geometry.vessel_start_mm + p.geometry.vessel_end_mm) / 2
        moved = mids @ st.baseline_to_study[:3, :3].T + st.baseline_to_study[:3, 3]
        vox = np.rint(moved @ np.linalg.inv(p.affine)[:3, :3].T + np.linalg.inv(p.affine)[:3, 3])
        hits = [st.vessel_mask[tuple(v.astype(int))] for v in vox]
        assert np.mean(hits) >= 0.8
    assert max(counts) <= 1.3 * min(counts)


def test_vessels_can_be_disabled():
    for anatomy in ("template", "phantom"):
        cfg = SynthConfig(vessel_bait=False, anatomy=anatomy, acquisition="fixed")
        p = make_patient(seed=2, shape=48, n_studies=2, config=cfg)
        assert len(p.geometry.vessel_radius_mm) == 0
        assert not any(st.vessel_mask.any() for st in p.studies)
