"""Loading a checkpoint never runs code from it (weights-only unpickling with an allow-list)."""

from __future__ import annotations

import argparse
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from metstrack.errors import CheckpointError
from metstrack.io.checkpoint import load_checkpoint, save_checkpoint
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model


class _Evil:
    """Pickles as a call to ``os.system`` (what a hostile checkpoint would hold)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload(tmp_path: Path) -> dict:
    cfg = ModelConfig(width=0.25)
    path = save_checkpoint(tmp_path / "plain.ckpt", build_model(cfg), cfg)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("where", ["state_dict", "hyper_parameters", "top"])
def test_malicious_checkpoint_runs_nothing_and_names_the_type(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "PWNED"
    payload = _payload(tmp_path)
    evil = _Evil(marker)
    if where == "state_dict":
        payload["state_dict"]["net.evil"] = evil
    elif where == "hyper_parameters":
        payload["hyper_parameters"]["model"] = evil
    else:
        payload["callbacks"] = {"x": evil}
    path = tmp_path / "evil.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran its code"
    msg = str(exc.value)
    assert msg.startswith(f"{path}: refused") and "system" in msg and "\n" not in msg


def test_lightning_objects_in_hyper_parameters_and_callbacks_still_load(tmp_path: Path) -> None:
    from lightning.fabric.utilities.data import AttributeDict

    payload = _payload(tmp_path)
    payload["hyper_parameters"] = AttributeDict(payload["hyper_parameters"])
    payload["hyper_parameters"]["args"] = argparse.Namespace(lr=1e-3, out=pathlib.Path("/x"))
    payload["callbacks"] = {
        "ModelCheckpoint{'monitor': 'val/score'}": {
            "best_model_score": np.float64(0.5),
            "dirpath": pathlib.PosixPath("/runs/ckpt"),
            "history": np.arange(3, dtype=np.float32),
        }
    }
    path = tmp_path / "lightning_objects.ckpt"
    torch.save(payload, path)
    _, cfg = load_checkpoint(path)
    assert cfg == ModelConfig(width=0.25)


def test_a_stored_model_config_object_loads(tmp_path: Path) -> None:
    payload = _payload(tmp_path)
    payload["hyper_parameters"]["model"] = ModelConfig(width=0.25)
    path = tmp_path / "cfg_object.ckpt"
    torch.save(payload, path)
    assert load_checkpoint(path)[1] == ModelConfig(width=0.25)
