"""The voxel size a checkpoint was trained at, read from its provenance JSON."""

from __future__ import annotations

import json

from metstrack.models.checkpoint import TRAINING_SPACING_KEY, training_spacing_mm


def test_spacing_comes_from_the_provenance_beside_the_checkpoint(tmp_path):
    ckpt = tmp_path / "model.pt"
    assert training_spacing_mm(ckpt) == 1.0  # no provenance: the 1 mm default
    (tmp_path / "model.json").write_text(json.dumps({TRAINING_SPACING_KEY: 1.5}))
    assert training_spacing_mm(ckpt) == 1.5
    (tmp_path / "model.json").write_text(json.dumps({TRAINING_SPACING_KEY: -2}))
    assert training_spacing_mm(ckpt, default=2.0) == 2.0
    (tmp_path / "model.json").write_text("{not json")
    assert training_spacing_mm(ckpt) == 1.0
