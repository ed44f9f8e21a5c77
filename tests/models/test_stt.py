"""STTUNet and its no-memory ablation: names, shapes, the ConvLSTM gates, memory carry-over."""

from __future__ import annotations

import math

import pytest
import torch

from metstrack.errors import MetstrackError
from metstrack.models.base import InputShapeError
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.models.stt import ConvLSTMCell, STTUNet

TINY = dict(width=0.25)


@pytest.fixture
def seq() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 32, 32, 32, generator=g)


def _net(name: str = "stt", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **{**TINY, **kw})).eval()


def test_published_module_names_and_widths() -> None:
    net = build_model(ModelConfig())
    children = [n for n, _ in net.named_children()]
    assert children == [
        "conv_0", "down_1", "down_2", "down_3", "down_4", "convlstm",
        "upcat_4", "upcat_3", "upcat_2", "upcat_1", "final_conv",
    ]  # fmt: skip
    sd = net.state_dict()
    assert tuple(sd["convlstm.conv.weight"].shape) == (1024, 512, 3, 3, 3)
    assert tuple(sd["conv_0.conv_0.conv.weight"].shape) == (32, 4, 3, 3, 3)
    assert tuple(sd["final_conv.weight"].shape) == (2, 32, 1, 1, 1)
    assert net.temporal and net.config == ModelConfig()
    ablation = build_model(ModelConfig(name="unet"))
    assert not ablation.temporal
    assert set(sd) - set(ablation.state_dict()) == {"convlstm.conv.weight", "convlstm.conv.bias"}


def test_width_multiplier_scales_features() -> None:
    cfg = ModelConfig(width=0.25)
    assert cfg.scaled_features == (8, 8, 16, 32, 64, 8)
    net = build_model(cfg)
    assert net.convlstm.hidden_channels == 64
    assert (
        sum(p.numel() for p in net.parameters())
        < sum(p.numel() for p in build_model(ModelConfig()).parameters()) / 10
    )


def test_shapes_single_patient_and_batch(seq: torch.Tensor) -> None:
    net = _net()
    with torch.no_grad():
        one = net(seq)
        batch = net(torch.stack([seq, seq.flip(0)]))
    assert one.shape == (3, 2, 32, 32, 32)
    assert batch.shape == (2, 3, 2, 32, 32, 32)
    torch.testing.assert_close(batch[0], one, rtol=1e-4, atol=1e-5)


def test_forward_equals_stepping(seq: torch.Tensor) -> None:
    net = _net()
    with torch.no_grad():
        full = net(seq)
        state = net.init_state(seq[:1])
        assert state[0].shape == (1, 64, 2, 2, 2) and not state[0].any()
        steps = []
        for t in range(3):
            logits, state = net.step(seq[t : t + 1], state)
            steps.append(logits[0])
    torch.testing.assert_close(torch.stack(steps), full, rtol=1e-4, atol=1e-5)


def test_convlstm_gate_order_matches_hand_computation() -> None:
    cell = ConvLSTMCell(1, 1, kernel_size=1)
    # rows: input, forget, output, candidate; columns: weight on x, weight on h
    w = [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0], [1.0, 0.5]]
    b = [0.1, -0.2, 0.3, -0.4]
    with torch.no_grad():
        cell.conv.weight.copy_(torch.tensor(w).reshape(4, 2, 1, 1, 1))
        cell.conv.bias.copy_(torch.tensor(b))
    x, h, c = 0.8, -0.3, 1.2
    full = lambda v: torch.full((1, 1, 2, 2, 2), v)  # noqa: E731
    with torch.no_grad():
        h1, c1 = cell(full(x), (full(h), full(c)))

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    pre = [w[k][0] * x + w[k][1] * h + b[k] for k in range(4)]
    i, f, o, g = sig(pre[0]), sig(pre[1]), sig(pre[2]), math.tanh(pre[3])
    c_ref = f * c + i * g
    h_ref = o * math.tanh(c_ref)
    assert torch.allclose(c1, full(c_ref), atol=1e-6)
    assert torch.allclose(h1, full(h_ref), atol=1e-6)
    # zero initial state when none is given
    h0, c0 = cell(full(x))
    c0_ref = sig(w[0][0] * x + b[0]) * math.tanh(w[3][0] * x + b[3])
    assert torch.allclose(c0, full(c0_ref), atol=1e-6)


def test_memory_carry_over_is_real(seq: torch.Tensor) -> None:
    changed = seq.clone()
    changed[0] = torch.randn(4, 32, 32, 32, generator=torch.Generator().manual_seed(9))
    stt, unet = _net("stt"), _net("unet")
    with torch.no_grad():
        a, b = stt(seq), stt(changed)
        ua, ub = unet(seq), unet(changed)
    assert (a[2] - b[2]).abs().max() > 1e-4  # an earlier study changes a later output
    assert (ua[0] - ub[0]).abs().max() > 1e-4
    torch.testing.assert_close(ua[1:], ub[1:], rtol=0, atol=0)  # no memory in the ablation
    later = seq.clone()
    later[2] = 0.0
    with torch.no_grad():
        c = stt(later)
    torch.testing.assert_close(c[:2], a[:2], rtol=1e-4, atol=1e-5)  # causal in time


def test_state_is_zero_per_patient(seq: torch.Tensor) -> None:
    net = _net()
    other = torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        alone = net(seq)
        net(other)  # a previous patient must not leak into the next
        again = net(seq)
    torch.testing.assert_close(alone, again, rtol=0, atol=0)


def test_spatial_size_not_multiple_of_16_is_a_clear_error() -> None:
    net = _net()
    with pytest.raises(InputShapeError, match="multiple of 16") as exc:
        net(torch.zeros(2, 4, 40, 32, 32))
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, MetstrackError)


def test_wrong_channels_and_rank_are_errors() -> None:
    net = _net()
    with pytest.raises(InputShapeError, match="4 input channels"):
        net(torch.zeros(2, 3, 32, 32, 32))
    with pytest.raises(InputShapeError, match=r"\(T, C, X, Y, Z\)"):
        net(torch.zeros(32, 32, 32))


def test_prior_mask_adds_one_channel(seq: torch.Tensor) -> None:
    net = _net(prior_mask=True)
    assert isinstance(net, STTUNet)
    assert net.conv_0.conv_0.conv.weight.shape[1] == 5
    x = torch.cat([seq, torch.zeros(3, 1, 32, 32, 32)], dim=1)
    with torch.no_grad():
        assert net(x).shape == (3, 2, 32, 32, 32)
    with pytest.raises(InputShapeError, match="prior-mask"):
        net(seq)


def test_training_step_backpropagates_through_time(seq: torch.Tensor) -> None:
    net = build_model(ModelConfig(width=0.25)).train()
    x = seq.clone().requires_grad_(True)
    out = net(x)
    out[2, 1].mean().backward()  # loss on the last study only
    assert x.grad is not None and x.grad[0].abs().sum() > 0  # reaches the first study
    assert net.convlstm.conv.weight.grad.abs().sum() > 0
