"""``metstrack predict`` resumes only into outputs of the same checkpoint and settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metstrack.io.checkpoint import save_checkpoint
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    cfg = SynthConfig(n_patients=1, seed=2, shape=32, min_studies=2, max_studies=2)
    return generate_cohort(cfg, tmp_path_factory.mktemp("cohort") / "c")


def _ckpt(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    return save_checkpoint(path, build_model(cfg), cfg)


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_other_checkpoint_or_threshold_is_refused_or_replaced(cli, cohort, tmp_path) -> None:
    a, b = _ckpt(tmp_path / "a.ckpt", 0), _ckpt(tmp_path / "b.ckpt", 1)
    out = tmp_path / "preds"
    base = ("predict", "--data", cohort, "--out", out)
    assert cli(*base, "--checkpoint", a).exit_code == 0
    before = _outputs(out)
    for extra in (("--checkpoint", b), ("--checkpoint", a, "--threshold", "0.9")):
        res = cli(*base, *extra)
        assert res.exit_code == 1, res.output
        line = res.output.strip()
        assert "\n" not in line and str(out) in line and "--overwrite" in line
        assert _outputs(out) == before  # nothing mixed, nothing rewritten
    study = next((out / "predictions").rglob("lesions.csv")).parent
    leftover = study / ".prob.nii.gz.999999999-ab12cd34.tmp.nii.gz"  # a killed writer's
    leftover.write_bytes(b"partial")
    again = cli(*base, "--checkpoint", a)  # the same run resumes
    assert again.exit_code == 0 and "kept from a previous run" in again.output
    assert not leftover.exists()
    replaced = cli(*base, "--checkpoint", b, "--overwrite")
    assert replaced.exit_code == 0 and "kept" not in replaced.output
    saved = json.loads((out / "predict_config.json").read_text())
    assert saved["config"]["checkpoint"] == str(b)
    # The batch size and device do not change the outputs: still a resume.
    same = cli(*base, "--checkpoint", b, "--sw-batch-size", "2")
    assert same.exit_code == 0 and "kept from a previous run" in same.output
