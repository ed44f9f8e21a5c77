"""DDP on CPU: two processes (gloo backend) through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metstrack.io.checkpoint import load_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.slow
@pytest.mark.parametrize("network", ["stt", "stt-ms"])
def test_two_process_ddp_on_cpu(tiny_cohort, tmp_path, network):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    cmd = [
        sys.executable, "-m", "metstrack.cli.main", "train",
        "--data", str(tiny_cohort.root), "--out", str(out),
        "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--max-steps", "2",
        "model.width=0.0625", f"model.name=\"{network}\"", "model.roi_size=[32,32,32]", "data.max_studies=2",
        "data.samples_per_epoch=4", "augment.affine_prob=0", "trainer.progress_bar=false",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    # 4 samples per epoch over 2 processes: 2 steps make one epoch, then validation
    assert result["global_step"] == 2 and result["epochs"] == 1
    # the single validation patient (3 labelled studies) is counted once, not per process
    assert result["scores"]["n_scans"] == 3
    net, cfg = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert cfg.name == network
    assert sum(p.numel() for p in net.parameters()) > 0
