"""Warm-up and decay of the learning rate."""

from __future__ import annotations

import pytest

from metstrack.train.config import OptimConfig
from metstrack.train.schedule import lr_factor


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_warmup_then_decay_to_the_floor(schedule):
    cfg = OptimConfig(schedule=schedule, warmup_steps=10, min_lr_ratio=0.05)
    f = [lr_factor(s, total_steps=100, cfg=cfg) for s in range(101)]
    assert f[0] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(f[:10], f[1:11], strict=True))
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[100] == pytest.approx(0.05)
    assert lr_factor(500, total_steps=100, cfg=cfg) == pytest.approx(0.05)


def test_cosine_midpoint_and_constant():
    cfg = OptimConfig(schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(50, total_steps=100, cfg=cfg) == pytest.approx(0.5)
    const = OptimConfig(schedule="constant", warmup_steps=4)
    assert lr_factor(3, total_steps=10, cfg=const) < 1.0
    assert lr_factor(90, total_steps=10, cfg=const) == 1.0
