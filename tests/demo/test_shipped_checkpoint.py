"""The checkpoint shipped for the demo: present, documented, loadable, usable."""

from __future__ import annotations

import json

import torch

from metstrack.demo.steps import SHIPPED_PROVENANCE, shipped_checkpoint
from metstrack.io.checkpoint import load_checkpoint


def test_shipped_checkpoint_loads_and_predicts():
    path = shipped_checkpoint()
    assert path is not None, "src/metstrack/data/stt_demo.pt is part of the package"
    prov = json.loads(path.with_name(SHIPPED_PROVENANCE).read_text())
    assert any(c.startswith("metstrack train") for c in prov["commands"])
    assert prov["training"]["global_step"] > 0
    model, cfg = load_checkpoint(path, map_location="cpu")
    assert cfg.name == "stt" and model.temporal
    assert tuple(cfg.modalities) == ("T1", "CT1", "T2", "FLAIR")
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 4, 48, 48, 48))  # (T, C, X, Y, Z): one patient, two studies
    assert logits.shape == (2, 2, 48, 48, 48)
    assert torch.isfinite(logits).all()
