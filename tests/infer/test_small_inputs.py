"""Small windows are refused up front; small grids are padded, never a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metstrack.infer.predict import PredictOptions, StudyImages, predict_patient
from metstrack.io.checkpoint import save_checkpoint
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.synth.config import SynthConfig
from metstrack.types import Volume
from metstrack.workflows.synth import generate_cohort


@pytest.mark.parametrize("name", ["stt", "unet", "dynunet"])
def test_instance_norm_networks_pad_a_16_voxel_grid(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=0.25, roi_size=(32, 32, 32)))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    images = tuple(
        Volume(rng.normal(size=(16, 16, 12)).astype(np.float32), affine) for _ in range(4)
    )
    res = predict_patient(
        model, "P1", [StudyImages("S1", images), StudyImages("S2", images)], tmp_path,
        options=PredictOptions(roi_size=(96, 96, 96)),
    )  # fmt: skip
    assert [r.study_id for r in res] == ["S1", "S2"]


def test_a_window_too_small_is_a_usage_error_before_any_work(cli, tmp_path: Path) -> None:
    cohort = generate_cohort(
        SynthConfig(n_patients=1, shape=32, max_studies=2), tmp_path / "cohort"
    )
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    ckpt = save_checkpoint(tmp_path / "m.ckpt", build_model(cfg), cfg)
    out = tmp_path / "preds"
    res = cli("predict", "--checkpoint", ckpt, "--data", cohort, "--out", out, "--roi", "16,16,16")
    assert res.exit_code == 2
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("usage error:")]
    assert "--roi 16,16,16" in line and "at least 32" in line
    assert "Traceback" not in res.output and not out.exists()
