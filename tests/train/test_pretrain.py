"""Self-supervised pretraining: corruptions, the loss going down, weights loading into STT and unet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metstrack.errors import CheckpointError, ConfigError
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.synth.config import SynthConfig
from metstrack.train.pretrain import pretrain
from metstrack.train.pretrain_config import load_pretrain_config
from metstrack.train.ssl_corrupt import (
    CorruptionConfig,
    bezier_curve,
    corrupt,
    local_shuffle,
    paint,
)
from metstrack.train.ssl_weights import FIRST_CONV, load_pretrained, read_pretrained
from metstrack.workflows.synth import generate_cohort

TINY = [
    "model.width=0.125",
    "model.roi_size=[32,32,32]",
    "trainer.accelerator='cpu'",
    "trainer.threads=1",
    "trainer.progress_bar=false",
]


@pytest.fixture(scope="module")
def synth_cohort(tmp_path_factory) -> Path:
    """Four co-registered 32^3 patients, 30 % of the studies flagged labelled."""
    out = tmp_path_factory.mktemp("ssl_cohort")
    cfg = SynthConfig(
        n_patients=4,
        shape=32,
        seed=0,
        max_studies=3,
        motion_max_deg=0,
        motion_max_mm=0,
        acquisition="fixed",
        labelled="0.3",
        split_fractions=(0.5, 0.25, 0.25),
    )
    return generate_cohort(cfg, out)


@pytest.fixture(scope="module")
def pretrained(synth_cohort, tmp_path_factory):
    cfg = load_pretrain_config(None, [*TINY, "trainer.max_steps=16", "optim.lr=3e-3"])
    return pretrain(cfg, synth_cohort, tmp_path_factory.mktemp("pre") / "run")


# -- corruptions ----------------------------------------------------------------------


def test_corrupt_is_seeded_and_changes_the_study(rng):
    x = rng.normal(size=(4, 16, 16, 16)).astype(np.float32)
    a = corrupt(x, np.random.default_rng(3), CorruptionConfig())
    b = corrupt(x, np.random.default_rng(3), CorruptionConfig())
    c = corrupt(x, np.random.default_rng(4), CorruptionConfig())
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.allclose(a, x)


def test_corrupt_applies_something_even_when_every_probability_is_zero(rng):
    x = rng.normal(size=(2, 8, 8, 8)).astype(np.float32)
    none = CorruptionConfig(nonlinear_prob=0, shuffle_prob=0, paint_prob=0)
    assert not np.allclose(corrupt(x, np.random.default_rng(0), none), x)


def test_local_shuffle_permutes_values_within_blocks(rng):
    x = rng.normal(size=(2, 12, 12, 12)).astype(np.float32)
    y = local_shuffle(x, np.random.default_rng(1), blocks=30, block_frac=0.25)
    assert not np.array_equal(x, y)
    # a permutation keeps every value of each channel
    for c in range(2):
        np.testing.assert_array_equal(np.sort(x[c].ravel()), np.sort(y[c].ravel()))


def test_inpaint_and_outpaint_touch_complementary_regions(rng):
    x = np.zeros((1, 24, 24, 24), np.float32) + 5.0
    x[0, 0, 0, 0] = -5.0  # noise range [-5, 5]
    inner = paint(x, np.random.default_rng(2), inpaint=True, boxes=1)
    outer = paint(x, np.random.default_rng(2), inpaint=False, boxes=1)
    changed_in = inner != x
    changed_out = outer != x
    assert changed_in.any() and changed_out.any()
    # same box: in-painting changes the box, out-painting everything else
    assert not (changed_in & changed_out).any()


def test_bezier_curve_is_monotone_from_0_to_1():
    xs, ys = bezier_curve(np.random.default_rng(0))
    assert xs[0] == pytest.approx(0) and xs[-1] == pytest.approx(1)
    assert ys[0] == pytest.approx(0) and ys[-1] == pytest.approx(1)
    assert np.all(np.diff(xs) >= 0)


# -- pretraining ----------------------------------------------------------------------


def test_pretraining_lowers_the_fixed_sample_loss(pretrained):
    assert pretrained.steps == 16
    assert pretrained.final_loss < pretrained.initial_loss
    log = pd.read_csv(pretrained.run_dir / "loss_log.csv")
    assert list(log["step"]) == list(range(1, 17))
    assert np.isfinite(log["restore_loss"]).all()
    cfg = json.loads((pretrained.run_dir / "config.json").read_text())
    assert cfg["config"]["objective"]["name"] == "restore"
    # test-split patients are left out: 3 of the 4 patients pretrain
    assert pretrained.n_patients == 3


def test_weights_load_into_stt_with_unmatched_keys_listed(pretrained):
    state, meta = read_pretrained(pretrained.weights)
    assert meta["modalities"] == ["T1", "CT1", "T2", "FLAIR"]
    net = build_model(ModelConfig(name="stt", width=0.125, roi_size=(32, 32, 32)))
    report = load_pretrained(net, pretrained.weights, modalities=net.config.modalities)
    assert "convlstm.conv.weight" in report.loaded
    assert FIRST_CONV in report.loaded
    # the restoration head has 4 outputs, segmentation 2: listed, not copied
    assert any(k.startswith("final_conv.weight") for k in report.shape_mismatch)
    assert report.missing == () and report.unexpected == ()
    sd = net.state_dict()
    torch.testing.assert_close(
        sd["down_4.convs.conv_1.conv.weight"], state["down_4.convs.conv_1.conv.weight"]
    )
    assert not torch.equal(sd["final_conv.bias"][:2], state["final_conv.bias"][:2])
    assert 0.9 < report.fraction_loaded < 1.0


def test_weights_load_into_the_no_memory_baseline(pretrained):
    net = build_model(ModelConfig(name="unet", width=0.125, roi_size=(32, 32, 32)))
    report = load_pretrained(net, pretrained.weights, modalities=net.config.modalities)
    assert set(report.unexpected) == {"convlstm.conv.weight", "convlstm.conv.bias"}
    assert "upcat_1.convs.conv_1.conv.weight" in report.loaded
    assert "convlstm.conv.weight" in report.unmatched


def test_first_convolution_is_matched_by_modality(pretrained):
    state, _ = read_pretrained(pretrained.weights)
    cfg = ModelConfig(
        name="stt",
        width=0.125,
        in_channels=2,
        modalities=("FLAIR", "CT1"),
        prior_mask=True,
        roi_size=(32, 32, 32),
    )
    net = build_model(cfg)
    report = load_pretrained(net, pretrained.weights, modalities=cfg.modalities, prior_mask=True)
    assert len(report.adapted) == 1 and "prior mask" in report.adapted[0]
    w = net.state_dict()[FIRST_CONV]
    src = state[FIRST_CONV]
    torch.testing.assert_close(w[:, 0], src[:, 3])  # FLAIR
    torch.testing.assert_close(w[:, 1], src[:, 1])  # CT1
    assert torch.count_nonzero(w[:, 2]) == 0  # prior-mask channel starts at zero


def test_unrelated_weights_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"net.encoder.weight": torch.zeros(3)}}, path)
    net = build_model(ModelConfig(name="unet", width=0.125))
    with pytest.raises(CheckpointError, match="no tensor fits"):
        load_pretrained(net, path)


def test_config_errors_suggest_the_fix():
    with pytest.raises(ConfigError, match="restore"):
        load_pretrain_config(None, ["objective.name='restor'"])
    with pytest.raises(ConfigError, match="basic-U-Net"):
        load_pretrain_config(None, ["model.name='segresnet'"])
    with pytest.raises(ConfigError, match="corrupt"):
        load_pretrain_config(None, ["corrupt.paint_prob=1.5"])


# -- the commands ---------------------------------------------------------------------


def test_cli_pretrain_usage_and_data_errors(cli, tmp_path, synth_cohort):
    res = cli("pretrain", "--data", synth_cohort, "--out", tmp_path, "--objective", "order")
    assert res.exit_code == 2
    assert "did you mean" in res.output.lower() or "restore" in res.output
    res = cli(
        "train",
        "--data",
        synth_cohort,
        "--out",
        tmp_path / "r",
        "--init-weights",
        tmp_path / "missing.pt",
        "--max-steps",
        "1",
        *TINY,
    )
    assert res.exit_code == 1
    assert "missing.pt" in res.output
