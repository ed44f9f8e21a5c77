"""The fast inference path (batched windows, bf16) agrees with the reference path.

The reference is the path before issue 18: float32, one window per network
call. Tolerances: batching changes only the order of float32 sums (1e-5); bf16
runs the network in bfloat16 (8 mantissa bits), so probabilities of the
shipped, trained network stay within 0.1 of float32 voxel by voxel (the
largest differences sit on lesion borders, where p is steep; 1e-3 on average)
and the masks within Dice 0.95 (measured figures in docs/speed.md). No timing is asserted here; speed is
measured by ``benchmarks/model_speed.py``.
"""

from __future__ import annotations

import pytest
import torch

from metstrack.demo.steps import shipped_checkpoint
from metstrack.infer.sliding import PRECISIONS, bf16_native, predict_sequence, resolve_precision
from metstrack.io.checkpoint import load_checkpoint
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model


def _phantom(t: int, size: int, seed: int = 0) -> torch.Tensor:
    """Noisy z-scored studies with two enhancing nodules (T1 post) and oedema (FLAIR).

    The shipped network segments both nodules (a few hundred voxels at p >= 0.5).
    """
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(t, 4, size, size, size, generator=g)
    ax = torch.arange(size, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    for c in ((12, 14, 20), (30, 28, 16)):
        d2 = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2
        x[:, 1] += 2.0 * (d2 <= 9).float()
        x[:, 3] += 1.0 * (d2 <= 36).float()
    return x


@pytest.fixture(scope="module")
def shipped():
    path = shipped_checkpoint()
    assert path is not None
    model, _ = load_checkpoint(path, map_location="cpu")
    return model.eval()


def test_batched_windows_equal_one_window_per_call() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="stt", width=0.25)).eval()
    x = _phantom(2, 48)
    ref = predict_sequence(net, x, roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=1)
    for batch in (2, 3, 8):
        got = predict_sequence(net, x, roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=batch)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bf16_agrees_with_fp32_on_the_shipped_network(shipped) -> None:
    x = _phantom(2, 48, seed=1)
    ref = predict_sequence(shipped, x, roi_size=(32, 32, 32), sw_batch_size=1, precision="fp32")
    got = predict_sequence(shipped, x, roi_size=(32, 32, 32), precision="bf16")
    assert got.dtype == torch.float32 and got.shape == ref.shape
    diff = (got - ref).abs()
    assert float(diff.max()) <= 0.1 and float(diff.mean()) <= 1e-3
    a, b = ref[:, 1] >= 0.5, got[:, 1] >= 0.5
    assert int(a.sum()) > 100
    assert 2 * int((a & b).sum()) / int(a.sum() + b.sum()) >= 0.95
    # the given model is left in float32
    assert all(p.dtype == torch.float32 for p in shipped.parameters())


def test_precision_names_are_checked_and_auto_follows_the_hardware() -> None:
    assert PRECISIONS == ("auto", "fp32", "bf16")
    assert resolve_precision("auto") == ("bf16" if bf16_native() else "fp32")
    assert resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="did you mean 'bf16'"):
        resolve_precision("bf61")
    net = build_model(ModelConfig(name="stt", width=0.25)).eval()
    with pytest.raises(ValueError, match="unknown precision"):
        predict_sequence(net, _phantom(1, 32), roi_size=None, precision="fp16")
