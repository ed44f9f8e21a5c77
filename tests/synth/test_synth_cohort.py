"""Whole imaging cohorts: determinism on disk, parallel workers, lesion sizes, motion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metstrack.config import load_config
from metstrack.core.lesions import lesion_table
from metstrack.errors import ConfigError
from metstrack.io.nifti import read_label, read_volume
from metstrack.synth.cohort import make_patient
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort

TABLES = (
    "tables/imaging.csv",
    "tables/split.csv",
    "tables/clinical_events.csv",
    "tables/clinical_patients.csv",
    "tables/radiosurgery_targets.csv",
    "ground_truth/transforms.csv",
    "ground_truth/lesion_trajectories.csv",
    "ground_truth/burden.csv",
    "ground_truth/vessels.csv",
)


def _arrays(root):
    out = {}
    for p in sorted((root / "imaging").rglob("*.nii.gz")):
        out[str(p.relative_to(root))] = read_volume(p, dtype=None).array
    for p in sorted((root / "ground_truth" / "instances").rglob("*.nii.gz")):
        out[str(p.relative_to(root))] = read_volume(p, dtype=None).array
    return out


def test_same_seed_identical_cohort_any_workers(tmp_path):
    cfg = SynthConfig(n_patients=2, seed=21, shape=32, max_studies=3)
    a = generate_cohort(cfg, tmp_path / "a")
    b = generate_cohort(SynthConfig(**{**cfg.__dict__, "workers": 2}), tmp_path / "b")
    c = generate_cohort(SynthConfig(**{**cfg.__dict__, "seed": 22}), tmp_path / "c")
    for rel in TABLES:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    arr_a, arr_b = _arrays(a), _arrays(b)
    assert arr_a.keys() == arr_b.keys() and len(arr_a) > 10
    for k in arr_a:
        np.testing.assert_array_equal(arr_a[k], arr_b[k])
    assert (a / "tables/clinical_patients.csv").read_bytes() != (
        c / "tables/clinical_patients.csv"
    ).read_bytes()


def test_make_patient_matches_the_written_cohort(small_cohort, small_cohort_config):
    p = make_patient(
        seed=small_cohort_config.seed,
        shape=small_cohort_config.shape,
        n_studies=None,
        config=small_cohort_config,
        index=1,
    )
    assert p.patient_id == "P00002"
    for st in p.studies:
        folder = small_cohort / "imaging/patientId" / p.patient_id / "studyId" / st.study_id
        written = read_volume(folder / "CT1.nii.gz", dtype=None).array
        np.testing.assert_array_equal(written, np.clip(np.rint(st.image("CT1")), 0, 32767))
        inst = read_volume(
            small_cohort / "ground_truth/instances" / p.patient_id / f"{st.study_id}.nii.gz",
            dtype=None,
        ).array
        np.testing.assert_array_equal(inst, st.instances)


def test_lesion_size_distribution_from_instance_maps(small_cohort):
    vols = []
    for p in sorted((small_cohort / "ground_truth" / "instances").rglob("*.nii.gz")):
        inst = read_label(p, binary=False)
        vols += [
            les.volume_mm3
            for les in lesion_table(None, inst.affine, labels=inst.array.astype(np.int32))
        ]
    vols = np.asarray(vols)
    assert vols.size >= 10
    assert (vols < 10).mean() >= 0.3
    assert vols.max() > 50


def test_misalignment_within_bounds(small_cohort):
    tf = pd.read_csv(small_cohort / "ground_truth" / "transforms.csv")
    assert (tf["angle_deg"] <= 7.0 + 1e-6).all() and (tf["translation_mm"] <= 5.0 + 1e-6).all()
    follow = tf.groupby("PatientID").tail(-1)
    assert (follow["angle_deg"] > 0).all()


def test_config_from_toml_and_unknown_key(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        'n_patients = 3\nshape = 64\nlabelled = "all"\nhazard_ratio = 1.5\n'
        "[covariates]\nhr_kps_per_10 = 0.7\n"
    )
    cfg = load_config(SynthConfig, f)
    assert (
        cfg.n_patients == 3
        and cfg.hazard_ratio == 1.5
        and cfg.covariates.hr_kps_per_10 == 0.7
        and cfg.labelled_fraction() == 1
    )
    f.write_text("n_patient = 3\n")
    with pytest.raises(ConfigError, match="n_patients"):
        load_config(SynthConfig, f)
    for bad in (["shape=8"], ["labelled=often"], ["min_studies=1"], ["split_fractions=[1,1,1]"]):
        with pytest.raises(ConfigError):
            load_config(SynthConfig, None, bad)


def test_labelled_fraction_policy():
    cfg = SynthConfig(labelled="all")
    p = make_patient(seed=0, shape=32, n_studies=3, config=cfg)
    assert all(s.labelled for s in p.studies)
    none = make_patient(seed=0, shape=32, n_studies=3, config=SynthConfig(labelled="0"))
    assert not any(s.labelled for s in none.studies)
