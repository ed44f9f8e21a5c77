"""The synthetic world on real anatomy: realism properties asserted on a small cohort.

Patients at 96^3 and 2 mm (a full-size head, fast enough for the suite). Each
check compares against what a toy world would fail: tissue fractions of a real
brain, a connected vascular tree that persists through time, lesions that are
not spheres, follow-ups on their own grids, skull-stripped zero background.
"""

from __future__ import annotations

from dataclasses import replace

import cc3d
import numpy as np
import pytest

from metstrack.errors import ConfigError
from metstrack.synth import anatomy as tissue
from metstrack.synth.cohort import make_patient
from metstrack.synth.config import SynthConfig
from metstrack.synth.contrast import CLINICAL_TISSUE, draw_table
from metstrack.synth.head import build_template_anatomy
from metstrack.synth.realism import elongation, sphericity, tubular_bright_fraction, zscore_stats
from metstrack.synth.render import bake_vessels, place_geometry, render_study

WORLD = SynthConfig(spacing_mm=2.0)
FIXED = replace(WORLD, acquisition="fixed")


@pytest.fixture(scope="module")
def patients():
    return [make_patient(seed=s, shape=96, n_studies=3, config=WORLD) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def fixed_patient():
    return make_patient(seed=5, shape=96, n_studies=3, config=FIXED)


def test_template_anatomy_is_deterministic_per_seed_and_differs_between_seeds():
    a = make_patient(seed=7, shape=48, n_studies=2)
    b = make_patient(seed=7, shape=48, n_studies=2)
    c = make_patient(seed=8, shape=48, n_studies=2)
    np.testing.assert_array_equal(a.tissues, b.tissues)
    for sa, sb in zip(a.studies, b.studies, strict=True):
        np.testing.assert_array_equal(sa.images, sb.images)
        np.testing.assert_array_equal(sa.affine, sb.affine)
    # Each patient has its own deformation of the template.
    assert np.mean(a.tissues != c.tissues) > 0.05


def test_tissue_fractions_are_those_of_a_real_brain(patients):
    for p in patients:
        lab = p.tissues
        icv = np.isin(
            lab,
            (tissue.CSF, tissue.GM, tissue.WM, tissue.DEEP_GM, tissue.VENTRICLE, tissue.CHOROID),
        )
        grey = np.isin(lab, (tissue.GM, tissue.DEEP_GM)).sum() / icv.sum()
        white = (lab == tissue.WM).sum() / icv.sum()
        assert 0.35 < grey < 0.7, grey  # the toy world had 0.16
        assert 0.2 < white < 0.5, white
        icv_ml = icv.sum() * 8.0 / 1000.0
        assert 1000 < icv_ml < 2000, icv_ml
        assert (lab == tissue.VENTRICLE).any() and (lab == tissue.DEEP_GM).any()


def test_vessel_tree_is_present_tubular_and_persistent(fixed_patient):
    p = fixed_patient
    g = p.geometry
    kinds = set(g.vessels.kind.tolist())
    assert {"artery", "sinus", "vein"} <= kinds
    assert len(g.vessel_radius_mm) >= 300  # a tree, not a dozen dots
    counts = []
    for st in p.studies:
        m = st.vessel_mask
        assert m.any() and not np.any(m & (st.instances > 0))
        counts.append(int(m.sum()))
        lab = cc3d.connected_components(m.astype(np.uint8), connectivity=26)
        sizes = np.bincount(lab.ravel())[1:]
        big = np.argsort(sizes)[::-1][:5] + 1
        # The largest vessel structures are long and thin.
        assert max(elongation(np.argwhere(lab == k)) for k in big) > 4.0
        ct1 = st.image("CT1")
        wm = (p.tissues == tissue.WM) & ~m & (st.instances == 0)
        assert np.median(ct1[m]) > 1.2 * np.median(ct1[wm])
    # Unchanged through time (only moved with the head).
    assert max(counts) <= 1.25 * min(counts)


def test_lesions_are_not_spheres():
    rng = np.random.default_rng(0)
    anat = build_template_anatomy(rng, 96, 1.5, draw_table(rng, "clinical"))
    volumes = np.array([4000.0, 2500.0, 1500.0, 900.0, 600.0, 400.0])
    geo = place_geometry(rng, anat, volumes, vessels=False)
    st = render_study(bake_vessels(anat, geo), geo, volumes, np.eye(4), rng)
    sph, ref = [], []
    for k in range(1, len(volumes) + 1):
        m = st.instances == k
        assert m.sum() * 1.5**3 == pytest.approx(volumes[k - 1], rel=0.02)
        sph.append(sphericity(m, (1.5, 1.5, 1.5)))
        # A voxelised ball of the same volume, measured the same way, is the reference.
        r = (3 * m.sum() / (4 * np.pi)) ** (1 / 3)
        ax = np.arange(-int(np.ceil(r)) - 2, int(np.ceil(r)) + 3)
        x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
        ref.append(sphericity(x**2 + y**2 + z**2 <= r**2, (1.5, 1.5, 1.5)))
    assert np.mean(sph) < np.mean(ref) - 0.05, (sph, ref)
    # Large lesions have a non-enhancing core inside an enhancing rim, off centre.
    big = st.instances == 1
    ct1 = st.images[1]
    assert geo.core_fraction[0] == 0 or np.percentile(ct1[big], 10) < 0.6 * np.percentile(
        ct1[big], 90
    )


def test_follow_ups_are_on_their_own_grids(patients):
    spacings, thick = [], 0
    for p in patients:
        base = p.studies[0]
        np.testing.assert_allclose(base.affine, p.affine)
        for st in p.studies[1:]:
            assert not np.allclose(st.affine, base.affine, atol=1e-3)
            sp = st.acquisition.spacing_mm
            spacings.append(sp)
            thick += max(sp) > 1.5 * min(sp)
            assert st.images.shape[1:] == st.instances.shape == st.vessel_mask.shape
    assert len({tuple(np.round(s, 3)) for s in spacings}) == len(spacings)
    # Per-study scanner scale: the same tissue has another intensity.
    scales = [tuple(st.acquisition.intensity_scale) for p in patients for st in p.studies]
    assert len(set(scales)) == len(scales)


def test_skull_stripped_studies_have_zero_background():
    p = make_patient(seed=4, shape=64, n_studies=2, config=replace(WORLD, skull="stripped"))
    for st in p.studies:
        outside = ~st.brain_mask
        assert outside.mean() > 0.3
        assert np.all(st.images[:, outside] == 0)
        assert st.images[:, st.brain_mask].mean() > 0
    on = make_patient(seed=4, shape=64, n_studies=2, config=WORLD)
    assert np.mean(on.studies[0].images[1][~on.studies[0].brain_mask] > 50) > 0.05


def test_post_contrast_intensities_have_a_bright_tubular_tail(fixed_patient):
    st = fixed_patient.studies[0]
    stats = zscore_stats(st.image("CT1"), st.brain_mask)
    assert stats.bright_fraction > 0.002
    assert tubular_bright_fraction(st.image("CT1"), st.brain_mask, (2.0, 2.0, 2.0)) > 0.3


def test_randomized_contrast_varies_per_patient_but_keeps_enhancement():
    rng = np.random.default_rng(0)
    tables = [draw_table(rng, "randomized") for _ in range(20)]
    t1_gm = [t.tissue[0, tissue.GM] for t in tables]
    assert np.std(t1_gm) > 0.1
    for t in tables:
        parenchyma = max(
            t.tissue[1, tissue.GM], t.tissue[1, tissue.WM], t.tissue[1, tissue.DEEP_GM]
        )
        assert t.solid[1] > 1.2 * parenchyma and t.artery[1] > 1.2 * parenchyma
    clinical = draw_table(rng, "clinical")
    np.testing.assert_allclose(clinical.tissue, CLINICAL_TISSUE, rtol=0.05)
    p = make_patient(seed=2, shape=48, n_studies=2, config=replace(WORLD, contrast="randomized"))
    assert all(np.isfinite(st.images).all() for st in p.studies)


def test_unknown_world_options_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'template'"):
        SynthConfig(anatomy="templat")
    with pytest.raises(ConfigError, match="skull"):
        SynthConfig(skull="off")
