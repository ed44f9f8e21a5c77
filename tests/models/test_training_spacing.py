"""The voxel size a checkpoint was trained at, read from its provenance JSON."""

from __future__ import annotations

import json

from metstrack.io.checkpoint import TRAINING_SPACING_KEY, training_spacing_mm


def test_spacing_comes_from_the_provenance_beside_the_checkpoint(tmp_path):
    ckpt = tmp_path / "model.pt"
    assert training_spacing_mm(ckpt) == 1.0  # no provenance: the 1 mm default
    (tmp_path / "model.json").write_text(json.dumps({TRAINING_SPACING_KEY: 1.5}))
    assert training_spacing_mm(ckpt) == 1.5
    (tmp_path / "model.json").write_text(json.dumps({TRAINING_SPACING_KEY: -2}))
    assert training_spacing_mm(ckpt, default=2.0) == 2.0
    (tmp_path / "model.json").write_text("{not json")
    assert training_spacing_mm(ckpt) == 1.0


def test_operating_point_numbers_from_provenance(tmp_path):
    from metstrack.io.checkpoint import MIN_VOLUME_KEY, THRESHOLD_KEY, provenance_number

    ckpt = tmp_path / "m.pt"
    assert provenance_number(ckpt, THRESHOLD_KEY, 0.5) == 0.5
    (tmp_path / "m.json").write_text(json.dumps({THRESHOLD_KEY: 0.7, MIN_VOLUME_KEY: True}))
    assert provenance_number(ckpt, THRESHOLD_KEY, 0.5) == 0.7
    assert provenance_number(ckpt, MIN_VOLUME_KEY, 0.0) == 0.0  # a bool is not a volume


def test_small_components_are_dropped_by_volume_in_mm3():
    import numpy as np

    from metstrack.infer.predict import drop_small_components

    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # 8 voxels
    mask[10:13, 10:13, 10:13] = 1  # 27 voxels
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm3 voxels: 64 and 216 mm3
    out = drop_small_components(mask, affine, 100.0)
    assert out[2:4, 2:4, 2:4].sum() == 0 and out[10:13, 10:13, 10:13].sum() == 27
    assert drop_small_components(mask, affine, 64.0).sum() == 35
