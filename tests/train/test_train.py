"""End-to-end training of a tiny STT: loss, checkpoints, resume, budget, validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metstrack.errors import ConfigError
from metstrack.infer.sliding import predict_sequence
from metstrack.io.checkpoint import load_checkpoint
from metstrack.train import module as module_mod
from metstrack.train.api import train
from metstrack.train.config import load_train_config
from metstrack.train.module import SequenceSegmentationModule

#: A tiny STT on 32^3 patches; every test here derives from it.
TINY = [
    "model.width=0.0625",
    "model.roi_size=[32,32,32]",
    "data.max_studies=2",
    "data.samples_per_epoch=4",
    "data.lesion_fraction=0.8",
    "optim.lr=1e-2",
    "augment.affine_prob=0",
    "optim.warmup_steps=2",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=-1",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "validation.every_n_epochs=3",
]


@pytest.fixture(scope="module")
def trained(tiny_cohort, tmp_path_factory):
    """One 16-step run shared by the tests of this module."""
    cfg = load_train_config(None, [*TINY, "model.width=0.125", "trainer.max_steps=16"])
    hooked: list = []
    out = tmp_path_factory.mktemp("run")
    result = train(
        cfg,
        tiny_cohort.root,
        out,
        cohort=tiny_cohort,
        score_hooks=[lambda e, s, scores: hooked.append((e, s, scores))],
    )
    return cfg, result, hooked


def test_loss_falls(trained):
    _, result, _ = trained
    log = pd.read_csv(result.run_dir / "logs" / "metrics.csv")
    losses = log["train/loss_step"].dropna().to_numpy()
    assert len(losses) == 16
    assert losses[-4:].mean() < 0.9 * losses[:4].mean()


def test_run_folder_records_config_fingerprint_and_scores(trained):
    cfg, result, hooked = trained
    assert result.global_step == 16 and result.stopped_by == "max_steps"
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["metstrack_version"]
    assert (
        saved["data_fingerprint"] == result.data_fingerprint and len(result.data_fingerprint) == 16
    )
    assert saved["config"]["model"]["width"] == 0.125
    assert result.best_ckpt.is_file() and result.last_ckpt.is_file()
    val = pd.read_csv(result.run_dir / "validation.csv")
    assert len(val) == len(result.history) == 1  # after epoch 3 (steps 4 per epoch)
    for key in ("lesion_f1", "small_sensitivity", "fp_per_scan", "dice", "score"):
        assert key in val.columns
    assert val["n_scans"].tolist() == [3]  # the whole validation patient: all 3 studies
    assert result.best_score == pytest.approx(val["score"].max(), rel=1e-5)
    assert [h[0] for h in hooked] == [2]
    assert json.loads((result.run_dir / "result.json").read_text())["global_step"] == 16


def test_checkpoint_reloads_with_identical_predictions(trained, tiny_cohort):
    _, result, _ = trained
    net, mcfg = load_checkpoint(result.last_ckpt)
    assert mcfg.width == 0.125 and tuple(mcfg.roi_size) == (32, 32, 32)
    lit = SequenceSegmentationModule.load_from_checkpoint(result.last_ckpt, map_location="cpu")
    lit.net.eval()
    x = torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = net(x)
        b = lit.net(x)
    assert torch.equal(a, b)
    p1 = predict_sequence(net, x, roi_size=(32, 32, 32), overlap=0.25)
    p2 = predict_sequence(lit.net, x, roi_size=(32, 32, 32), overlap=0.25)
    assert torch.equal(p1, p2)
    assert torch.allclose(p1.sum(dim=1), torch.ones(2, 32, 32, 32), atol=1e-5)


def test_resume_continues_the_step_count(trained, tiny_cohort, tmp_path):
    _, first, _ = trained
    cfg = load_train_config(None, [*TINY, "model.width=0.125", "trainer.max_steps=17"])
    result = train(
        cfg, tiny_cohort.root, tmp_path / "resumed", cohort=tiny_cohort, resume=first.last_ckpt
    )
    assert result.global_step == 17
    assert result.best_ckpt == tmp_path / "resumed" / "checkpoints" / "best.ckpt"
    assert result.best_ckpt.is_file()
    before, _ = load_checkpoint(first.last_ckpt)
    after, _ = load_checkpoint(result.last_ckpt)
    changed = [
        not torch.equal(p, q)
        for p, q in zip(before.state_dict().values(), after.state_dict().values(), strict=True)
    ]
    assert any(changed)  # it trained further from the restored weights
    saved = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert saved["resumed_from"] == str(first.last_ckpt)


def test_time_budget_stops_and_validates_whole_patients(tiny_cohort, tmp_path, monkeypatch):
    calls = []
    real = module_mod.predict_sequence

    def spy(model, images, **kw):
        calls.append((tuple(images.shape), model.training))
        return real(model, images, **kw)

    monkeypatch.setattr(module_mod, "predict_sequence", spy)
    cfg = load_train_config(
        None, [*TINY, "trainer.max_steps=1000", "trainer.time_budget_min=0.0005"]
    )
    result = train(cfg, tiny_cohort.root, tmp_path / "budget", cohort=tiny_cohort)
    assert result.stopped_by == "time_budget"
    assert 1 <= result.global_step < 1000
    assert result.best_ckpt.is_file() and result.last_ckpt.is_file()
    # validation ran once on the final weights, on the whole patient: 3 studies, 32^3 volume
    assert calls and calls[0][0] == (3, 4, 32, 32, 32)
    assert not calls[0][1]
    assert math.isfinite(result.best_score)


def test_same_seed_same_weights(tiny_cohort, tmp_path):
    cfg = load_train_config(None, [*TINY, "trainer.max_steps=2", "validation.enabled=false"])
    a = train(cfg, tiny_cohort.root, tmp_path / "a", cohort=tiny_cohort)
    b = train(cfg, tiny_cohort.root, tmp_path / "b", cohort=tiny_cohort)
    na, _ = load_checkpoint(a.last_ckpt)
    nb, _ = load_checkpoint(b.last_ckpt)
    for p, q in zip(na.state_dict().values(), nb.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert np.isnan(a.best_score)


def test_score_hook_can_stop_a_run(tiny_cohort, tmp_path):
    """Hyperparameter search prunes by raising from a hook (e.g. optuna.TrialPruned)."""

    class PrunedError(Exception):
        pass

    def prune(epoch, step, scores):
        assert {"lesion_f1", "small_sensitivity", "fp_per_scan", "dice", "score"} <= set(scores)
        raise PrunedError(f"pruned at step {step}")

    cfg = load_train_config(
        None,
        [*TINY, "trainer.max_steps=50", "data.samples_per_epoch=1", "validation.every_n_epochs=1"],
    )
    with pytest.raises(PrunedError, match="step 1"):
        train(cfg, tiny_cohort.root, tmp_path / "pruned", cohort=tiny_cohort, score_hooks=[prune])


def test_early_stopping_with_step_interval_validation(tiny_cohort, tmp_path):
    # a learning rate of ~0 keeps the score constant: no improvement after the first validation
    cfg = load_train_config(
        None,
        [
            *TINY,
            "optim.lr=1e-12",
            "trainer.max_steps=50",
            "trainer.early_stopping_patience=1",
            "validation.val_check_interval_steps=1",
        ],
    )
    result = train(cfg, tiny_cohort.root, tmp_path / "early", cohort=tiny_cohort)
    assert result.stopped_by == "early_stopping"
    assert result.global_step == 2 and len(result.history) == 2
    assert [h["step"] for h in result.history] == [1.0, 2.0]


PUBLISHED_GPU = Path(__file__).resolve().parents[2] / "configs" / "stt_published_gpu.toml"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: nothing to refuse")
def test_a_gpu_config_on_a_machine_without_gpu_is_refused_before_any_work(tiny_cohort, tmp_path):
    cfg = load_train_config(PUBLISHED_GPU)
    with pytest.raises(ConfigError, match="accelerator = 'gpu'.*sees no CUDA GPU"):
        train(cfg, tiny_cohort.root, tmp_path / "run", cohort=tiny_cohort)
    assert not (tmp_path / "run").exists()


def test_the_published_gpu_config_trains_the_published_network_on_cpu_settings(
    tiny_cohort, tmp_path
):
    """The GPU config as written, with only the machine, patch and length made CPU-sized.

    It builds the published STT (features 32, 32, 64, 128, 256, 32) and its loss,
    schedule, clipping and validation run for two steps; the full-size run itself
    needs a GPU (docs/training.md).
    """
    cfg = load_train_config(
        PUBLISHED_GPU,
        [
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.max_steps=2",
            "trainer.max_epochs=-1",
            "trainer.progress_bar=false",
            "model.roi_size=[32,32,32]",
            "data.max_studies=2",
            "data.num_workers=0",
            "validation.every_n_epochs=1",
        ],
    )
    assert cfg.model.scaled_features == (32, 32, 64, 128, 256, 32)
    result = train(cfg, tiny_cohort.root, tmp_path / "run", cohort=tiny_cohort)
    net, saved = load_checkpoint(result.last_ckpt)
    assert saved.scaled_features == (32, 32, 64, 128, 256, 32)
    assert sum(p.numel() for p in net.parameters()) > 5_000_000
