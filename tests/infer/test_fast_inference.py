"""The fast inference path (batched windows, bf16, channels-last) agrees with the reference path.

The reference is the path before issue 18: float32, the network as trained
(``ncdhw`` memory format), one window per network call. The channels-last
format in float32 changes only the order of sums (1e-4 on probabilities). Tolerances: batching changes only the order of float32 sums (1e-5); bf16
runs the network in bfloat16 (8 mantissa bits), so probabilities of the
shipped, trained network stay within 0.1 of float32 voxel by voxel (the
largest differences sit on lesion borders, where p is steep; 1e-3 on average)
and the masks within Dice 0.95 (measured figures in docs/speed.md). No timing is asserted here; speed is
measured by ``benchmarks/model_speed.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from metstrack.demo.steps import shipped_checkpoint
from metstrack.infer.sliding import (
    CHANNELS_LAST_MIN_WIDTH,
    MEMORY_FORMATS,
    PRECISIONS,
    _instance_to_group_norm,
    bf16_native,
    inference_network,
    predict_sequence,
    resolve_memory_format,
    resolve_precision,
)
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
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert resolve_precision("fp16") == "fp16"  # only when asked: auto never picks it
    assert resolve_precision("auto") == ("bf16" if bf16_native() else "fp32")
    assert resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="did you mean 'bf16'"):
        resolve_precision("bf61")
    net = build_model(ModelConfig(name="stt", width=0.25)).eval()
    with pytest.raises(ValueError, match="unknown precision"):
        predict_sequence(net, _phantom(1, 32), roi_size=None, precision="fp8")


def _norms(net: torch.nn.Module) -> dict[str, int]:
    names = [type(m).__name__ for m in net.modules()]
    return {n: names.count(n) for n in ("InstanceNorm3d", "GroupNorm")}


def test_memory_format_auto_follows_the_measured_rule() -> None:
    assert MEMORY_FORMATS == ("auto", "ncdhw", "channels-last")
    narrow = build_model(ModelConfig(name="stt", width=0.25))  # 8 channels at full resolution
    wide = build_model(ModelConfig(name="stt", width=0.5))  # 16
    assert narrow.config.scaled_features[0] < CHANNELS_LAST_MIN_WIDTH
    assert wide.config.scaled_features[0] == CHANNELS_LAST_MIN_WIDTH
    assert resolve_memory_format("auto", narrow, "fp32") == "channels-last"
    assert resolve_memory_format("auto", narrow, "bf16") == "ncdhw"
    assert resolve_memory_format("auto", wide, "bf16") == "channels-last"
    assert resolve_memory_format("auto", wide, "bf16", "cuda") == "ncdhw"  # not measured there
    assert resolve_memory_format("ncdhw", wide, "fp32") == "ncdhw"
    with pytest.raises(ValueError, match="did you mean 'channels-last'"):
        resolve_memory_format("channel-last", wide, "fp32")
    with pytest.raises(ValueError, match="unknown memory format"):
        predict_sequence(narrow, _phantom(1, 32), roi_size=None, memory_format="nchw")


def test_channels_last_network_is_a_converted_copy_with_equal_outputs() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="stt", width=0.5)).eval()
    before = _norms(net)
    assert before["InstanceNorm3d"] > 0 and before["GroupNorm"] == 0
    assert inference_network(net, torch.float32, "ncdhw") is net
    fast = inference_network(net, torch.float32, "channels-last")
    assert fast is not net and _norms(fast) == {
        "InstanceNorm3d": 0,
        "GroupNorm": before["InstanceNorm3d"],
    }
    assert _norms(net) == before  # the given network is not changed
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = _phantom(1, 32)
    with torch.inference_mode():
        ref, _ = net.step(x, None)
        got, _ = fast.step(x.contiguous(memory_format=torch.channels_last_3d), None)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def test_group_norm_swap_keeps_affine_and_leaves_running_statistics_alone() -> None:
    seq = torch.nn.Sequential(
        torch.nn.InstanceNorm3d(3, affine=True),
        torch.nn.InstanceNorm3d(3, affine=False),
        torch.nn.InstanceNorm3d(3, affine=False, track_running_stats=True),
    ).eval()
    with torch.no_grad():
        seq[0].weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        seq[0].bias.copy_(torch.tensor([0.1, 0.0, 3.0]))
        seq[2].running_mean.fill_(1.0)  # eval uses these: not an instance norm any more
    net = torch.nn.Module()
    net.body = seq
    swapped = copy.deepcopy(net)
    _instance_to_group_norm(swapped)
    kinds = [type(m).__name__ for m in swapped.body]
    assert kinds == ["GroupNorm", "GroupNorm", "InstanceNorm3d"]
    x = torch.randn(2, 3, 5, 6, 7)
    torch.testing.assert_close(swapped.body(x), net.body(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_channels_last_agrees_with_the_reference_on_the_shipped_network(shipped, precision) -> None:
    x = _phantom(2, 48, seed=2)
    ref = predict_sequence(shipped, x, roi_size=(32, 32, 32), sw_batch_size=1)
    got = predict_sequence(
        shipped, x, roi_size=(32, 32, 32), precision=precision, memory_format="channels-last"
    )
    diff = (got - ref).abs()
    a, b = ref[:, 1] >= 0.5, got[:, 1] >= 0.5
    assert int(a.sum()) > 100
    if precision == "fp32":  # fp16 keeps 11 bits: it takes the bf16 tolerance
        assert float(diff.max()) <= 1e-4
        assert torch.equal(a, b) or 2 * int((a & b).sum()) / int(a.sum() + b.sum()) >= 0.999
    else:
        assert float(diff.max()) <= 0.1 and float(diff.mean()) <= 1e-3
        assert 2 * int((a & b).sum()) / int(a.sum() + b.sum()) >= 0.95
    assert all(p.dtype == torch.float32 for p in shipped.parameters())
    assert _norms(shipped)["GroupNorm"] == 0
