"""``stt-ms``: STT with memory at every skip level (issue 17, a stronger longitudinal model)."""

from __future__ import annotations

import torch
from torch import nn

from metstrack.infer.sliding import predict_sequence
from metstrack.io.checkpoint import load_checkpoint, save_checkpoint
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.models.stt_ms import MEMORY_LEVELS, STTMultiScale


def _pair(seed: int = 0) -> tuple[nn.Module, STTMultiScale]:
    torch.manual_seed(seed)
    stt = build_model(ModelConfig(name="stt", width=0.25)).eval()
    ms = build_model(ModelConfig(name="stt-ms", width=0.25)).eval()
    assert isinstance(ms, STTMultiScale)
    missing, unexpected = ms.load_state_dict(stt.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith(("skip_memory.", "skip_proj.")) for k in missing)
    return stt, ms


def _seq(t: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(t, 4, size, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_projections(ms: STTMultiScale, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for proj in ms.skip_proj:
            proj.weight.copy_(0.5 * torch.randn(proj.weight.shape, generator=g))


def _silence_bottleneck_memory(net: STTMultiScale) -> None:
    """Zero the ConvLSTM: its state stays 0, so only the skip memories carry the past."""
    with torch.no_grad():
        net.convlstm.conv.weight.zero_()
        net.convlstm.conv.bias.zero_()


def test_starts_as_exactly_the_stt_it_was_initialised_from() -> None:
    stt, ms = _pair()
    x = _seq()
    with torch.no_grad():
        torch.testing.assert_close(ms(x), stt(x), rtol=0, atol=0)


def test_stepping_equals_the_batched_sequence_forward() -> None:
    _, ms = _pair()
    _randomise_projections(ms)
    x = _seq()
    with torch.no_grad():
        whole = ms(x)
        state = None
        for t in range(x.shape[0]):
            logits, state = ms.step(x[t : t + 1], state)
            torch.testing.assert_close(logits[0], whole[t], rtol=1e-4, atol=1e-4)
    # the state is flat and batch-first: bottleneck (h, c) then one GRU state per level
    assert len(state) == 2 + len(MEMORY_LEVELS)
    sizes = [s.shape[-1] for s in state[2:]]
    assert sizes == [32 // 2**level for level in MEMORY_LEVELS]


def test_init_state_matches_the_state_a_step_returns() -> None:
    _, ms = _pair()
    x = _seq(1)
    zero = ms.init_state(x)
    _, after = ms.step(x, None)
    assert [z.shape for z in zero] == [a.shape for a in after]
    with torch.no_grad():
        torch.testing.assert_close(ms.step(x, zero)[0], ms.step(x, None)[0])


def test_skip_memory_carries_the_past_where_the_bottleneck_does_not() -> None:
    _, ms = _pair()
    _silence_bottleneck_memory(ms)
    x = _seq(2)
    changed = x.clone()
    changed[0] += 2.0  # only the earlier study differs
    with torch.no_grad():
        # zero projections: no memory anywhere, the second study's output ignores the first
        same = float((ms(x)[1] - ms(changed)[1]).abs().max())
        _randomise_projections(ms)
        moved = float((ms(x)[1] - ms(changed)[1]).abs().max())
    assert same < 1e-6
    assert moved > 1e-3


def test_sliding_window_carries_every_memory_per_window() -> None:
    _, ms = _pair()
    _randomise_projections(ms)
    x = _seq(2, 32)
    with torch.no_grad():
        ref = torch.softmax(ms(x), dim=1)
    got = predict_sequence(ms, x, roi_size=(32, 32, 32))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    bigger = _seq(2, 48)
    out = predict_sequence(ms, bigger, roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=2)
    assert out.shape == (2, 2, 48, 48, 48) and torch.isfinite(out).all()


def test_checkpoint_round_trip_rebuilds_the_variant(tmp_path) -> None:
    _, ms = _pair()
    _randomise_projections(ms)
    path = save_checkpoint(tmp_path / "ms.ckpt", ms, ms.config)
    net, cfg = load_checkpoint(path)
    assert cfg.name == "stt-ms" and isinstance(net, STTMultiScale)
    x = _seq(2)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), ms(x))


def test_gradients_reach_the_skip_memories_once_projections_move() -> None:
    _, ms = _pair()
    ms.train()
    x = _seq(2)
    loss = ms(x)[:, 1].mean()
    loss.backward()
    # zero-initialised projections get a gradient at once; the GRUs behind them wait for it
    assert all(float(p.weight.grad.abs().sum()) > 0 for p in ms.skip_proj)
    assert all(float(m.gates.weight.grad.abs().sum()) == 0 for m in ms.skip_memory)
    ms.zero_grad()
    _randomise_projections(ms)
    ms(x)[:, 1].mean().backward()
    assert all(float(m.gates.weight.grad.abs().sum()) > 0 for m in ms.skip_memory)
