"""``metstrack predict`` over a tiny synthetic release-layout cohort."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from metstrack.io.checkpoint import save_checkpoint
from metstrack.io.nifti import read_volume
from metstrack.io.release import read_release
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    cfg = SynthConfig(
        n_patients=2, seed=1, shape=32, min_studies=2, max_studies=2, vessel_bait=False
    )
    return generate_cohort(cfg, root)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", build_model(cfg), cfg)


def _copy(cohort: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cohort, tmp_path / "data"))


def test_predict_writes_every_study_on_its_native_grid(cli, cohort, checkpoint, tmp_path) -> None:
    out = tmp_path / "preds"
    res = cli("predict", "--checkpoint", checkpoint, "--data", cohort, "--out", out)
    assert res.exit_code == 0, res.output
    studies = read_release(cohort).studies
    for st in studies:
        folder = out / "predictions" / "patientId" / st.patient_id / "studyId" / st.study_id
        native = read_volume(st.path("CT1"))
        for name in ("mask.nii.gz", "prob.nii.gz"):
            img = nib.load(folder / name)
            assert img.shape == native.shape
            np.testing.assert_allclose(img.affine, native.affine, atol=1e-4)
        assert (folder / "lesions.csv").is_file()
    saved = json.loads((out / "predict_config.json").read_text())
    assert saved["config"]["patients"] == sorted({s.patient_id for s in studies})
    assert saved["model"]["name"] == "stt"
    again = cli("predict", "--checkpoint", checkpoint, "--data", cohort, "--out", out)
    assert again.exit_code == 0 and "kept from a previous run" in again.output


def test_one_bad_patient_is_reported_and_the_others_complete(
    cli, cohort, checkpoint, tmp_path
) -> None:
    data = _copy(cohort, tmp_path)
    patients = read_release(data).patients
    bad = patients[1].studies[1].path("T2")
    bad.write_bytes(gzip.compress(b"not a nifti")[:10])  # truncated gzip stream
    out = tmp_path / "preds"
    res = cli("predict", "--checkpoint", checkpoint, "--data", data, "--out", out)
    assert res.exit_code == 1
    assert str(bad) in res.output and patients[1].patient_id in res.output
    for p in (patients[0],):
        for st in p.studies:
            assert (
                out
                / "predictions"
                / "patientId"
                / p.patient_id
                / "studyId"
                / st.study_id
                / "lesions.csv"
            ).is_file()
    assert not (out / "predictions" / "patientId" / patients[1].patient_id).exists()


def test_modalities_disagreeing_in_geometry_name_the_file(
    cli, cohort, checkpoint, tmp_path
) -> None:
    data = _copy(cohort, tmp_path)
    p = read_release(data).patients[0]
    flair = p.studies[0].path("FLAIR")
    img = nib.load(flair)
    shifted = img.affine.copy()
    shifted[0, 3] += 7.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), flair)
    res = cli(
        "predict",
        "--checkpoint",
        checkpoint,
        "--data",
        data,
        "--out",
        tmp_path / "o",
        "--patients",
        p.patient_id,
    )
    assert res.exit_code == 1 and "grids differ" in res.output and "FLAIR" in res.output


def test_checkpoint_of_another_architecture_is_a_data_error(cli, cohort, tmp_path) -> None:
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    path = save_checkpoint(tmp_path / "bad.ckpt", build_model(cfg), cfg)
    raw = torch.load(path, weights_only=True)
    raw["hyper_parameters"]["model"]["name"] = "unet"  # weights of STT, config of the ablation
    torch.save(raw, path)
    res = cli("predict", "--checkpoint", path, "--data", cohort, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "bad.ckpt" in res.output and "convlstm.conv.weight" in res.output


def test_usage_errors(cli, cohort, checkpoint, tmp_path) -> None:
    res = cli(
        "predict", "--checkpoint", checkpoint, "--data", cohort, "--out", tmp_path, "--roi", "32,32"
    )
    assert res.exit_code == 2
    res = cli(
        "predict",
        "--checkpoint",
        checkpoint,
        "--data",
        cohort,
        "--out",
        tmp_path,
        "--patients",
        "P99999",
    )
    assert res.exit_code == 1 and "unknown patient" in res.output


def test_preprocessed_dataset_outputs_on_the_original_grids(
    cli, cohort, checkpoint, tmp_path
) -> None:
    from metstrack.core.grid import Grid
    from metstrack.core.mapping import StudyTransform, save_transform

    data = _copy(cohort, tmp_path)
    p = read_release(data).patients[0]
    original = np.diag([2.0, 2.0, 2.5, 1.0])  # a coarser "original file" grid
    original[:3, 3] = (-30.0, -28.0, -26.0)
    for st in p.studies:
        grid = Grid.of(read_volume(st.path("CT1")))
        save_transform(
            data,
            StudyTransform(
                p.patient_id,
                st.study_id,
                p.studies[0].study_id,
                np.eye(4),
                Grid((20, 22, 18), original),
                grid,
            ),
        )
    args = ("predict", "--checkpoint", checkpoint, "--data", data, "--patients", p.patient_id)
    res = cli(*args, "--out", tmp_path / "native")
    assert res.exit_code == 0, res.output
    folder = (
        tmp_path
        / "native"
        / "predictions"
        / "patientId"
        / p.patient_id
        / "studyId"
        / p.studies[1].study_id
    )
    img = nib.load(folder / "prob.nii.gz")
    assert img.shape == (20, 22, 18)
    np.testing.assert_allclose(img.affine, original, atol=1e-5)
    res = cli(*args, "--out", tmp_path / "grid", "--input-grid")
    assert res.exit_code == 0, res.output
    folder = (
        tmp_path
        / "grid"
        / "predictions"
        / "patientId"
        / p.patient_id
        / "studyId"
        / p.studies[1].study_id
    )
    assert nib.load(folder / "prob.nii.gz").shape == read_volume(p.studies[1].path("CT1")).shape


def test_precision_option_is_recorded_and_part_of_the_run(
    cli, cohort, checkpoint, tmp_path
) -> None:
    bad = cli(
        "predict", "--checkpoint", checkpoint, "--data", cohort, "--out", tmp_path / "x",
        "--precision", "bf61",
    )  # fmt: skip
    assert bad.exit_code == 2 and "bf16" in bad.output
    out = tmp_path / "preds"
    args = ("predict", "--checkpoint", checkpoint, "--data", cohort, "--out", out)
    res = cli(*args, "--precision", "bf16", "--patients", "P00001")
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "predict_config.json").read_text())
    assert saved["config"]["precision"] == "bf16" and saved["config"]["sw_batch_size"] == 2
    # fp32 outputs differ from bf16 ones: the run refuses to mix them without --overwrite
    again = cli(*args, "--precision", "fp32", "--patients", "P00001")
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_memory_format_option_is_recorded_resolved_and_part_of_the_run(
    cli, cohort, checkpoint, tmp_path
) -> None:
    bad = cli(
        "predict", "--checkpoint", checkpoint, "--data", cohort, "--out", tmp_path / "x",
        "--memory-format", "channel-last",
    )  # fmt: skip
    assert bad.exit_code == 2 and "channels-last" in bad.output
    out = tmp_path / "preds"
    args = ("predict", "--checkpoint", checkpoint, "--data", cohort, "--out", out)
    res = cli(*args, "--precision", "fp32", "--patients", "P00001")  # auto format
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "predict_config.json").read_text())["config"]
    assert saved["precision"] == "fp32" and saved["memory_format"] == "channels-last"
    # the reference path's outputs differ in the last bits: not mixed without --overwrite
    ref = ("--precision", "fp32", "--memory-format", "ncdhw", "--patients", "P00001")
    assert cli(*args, *ref).exit_code != 0
    res = cli(*args, *ref, "--overwrite")
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "predict_config.json").read_text())["config"]
    assert saved["memory_format"] == "ncdhw"
