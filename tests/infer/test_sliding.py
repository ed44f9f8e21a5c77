"""Sequence sliding-window inference: equivalence with a full forward, padding, memory, TTA."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from metstrack.infer.sliding import predict_sequence
from metstrack.models.base import InputShapeError
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model


def _net(name: str = "stt", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, width=0.25, **kw)).eval()


def _seq(t: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(t, 4, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("roi", [None, (32, 32, 32)])
def test_window_covering_the_volume_equals_full_forward(roi) -> None:
    net, x = _net(), _seq(3, (32, 32, 32))
    with torch.no_grad():
        ref = torch.softmax(net(x), dim=1)
    got = predict_sequence(net, x, roi_size=roi)
    assert got.shape == (3, 2, 32, 32, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_odd_sizes_are_padded_never_cropped() -> None:
    net, x = _net(), _seq(2, (36, 30, 20))
    got = predict_sequence(net, x, roi_size=None)
    assert got.shape == (2, 2, 36, 30, 20)
    # reference: zero-pad symmetrically to multiples of 16, run, remove the padding
    pad = [(48 - 36) // 2, (32 - 30) // 2, (32 - 20) // 2]
    xp = torch.nn.functional.pad(
        x, (pad[2], 32 - 20 - pad[2], pad[1], 32 - 30 - pad[1], pad[0], 48 - 36 - pad[0])
    )
    with torch.no_grad():
        ref = torch.softmax(net(xp), dim=1)
    ref = ref[:, :, pad[0] : pad[0] + 36, pad[1] : pad[1] + 30, pad[2] : pad[2] + 20]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_per_window_state_equals_whole_sequence_in_each_window() -> None:
    """Carrying the state per window equals sliding over space with the whole sequence."""
    net, x = _net(), _seq(2, (48, 40, 32))
    t, c = x.shape[:2]

    def whole_sequence(win: torch.Tensor) -> torch.Tensor:
        seq = win.reshape(win.shape[0], t, c, *win.shape[2:])
        probs = torch.softmax(net(seq), dim=2)
        return probs.reshape(win.shape[0], t * 2, *win.shape[2:])

    with torch.no_grad():
        ref = sliding_window_inference(
            x.reshape(1, t * c, *x.shape[2:]), (32, 32, 32), 1, whole_sequence,
            overlap=0.5, mode="gaussian",
        )[0].reshape(t, 2, *x.shape[2:])  # fmt: skip
    for bs in (1, 3):
        got = predict_sequence(net, x, roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=bs)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_memory_is_carried_through_windows() -> None:
    x = _seq(2, (48, 32, 32))
    changed = x.clone()
    changed[0] += 2.0
    for name, temporal in (("stt", True), ("unet", False)):
        net = _net(name)
        a = predict_sequence(net, x, roi_size=(32, 32, 32))
        b = predict_sequence(net, changed, roi_size=(32, 32, 32))
        diff = float((a[1] - b[1]).abs().max())
        assert (diff > 1e-4) if temporal else (diff < 1e-6)


def test_flip_tta_is_flip_equivariant() -> None:
    net, x = _net(), _seq(1, (32, 32, 32))
    plain = predict_sequence(net, x, roi_size=None)
    tta = predict_sequence(net, x, roi_size=None, tta_flips=True)
    tta_flipped = predict_sequence(net, x.flip(2), roi_size=None, tta_flips=True)
    torch.testing.assert_close(tta_flipped.flip(2), tta, rtol=1e-4, atol=1e-5)
    assert float((plain - tta).abs().max()) > 1e-5
    torch.testing.assert_close(tta.sum(1), torch.ones(1, 32, 32, 32), rtol=1e-5, atol=1e-5)


def test_prior_mask_feeds_the_previous_prediction() -> None:
    net, x = _net(prior_mask=True), _seq(3, (32, 32, 32))
    auto = predict_sequence(net, x, roi_size=None)
    # teacher-forced with the thresholded previous predictions gives the same result
    prior = torch.zeros(3, 32, 32, 32)
    for t in range(1, 3):
        prior[t] = ((1 - auto[t - 1, 0]) >= 0.5).float()
    forced = predict_sequence(net, x, roi_size=None, prior_masks=prior)
    torch.testing.assert_close(forced, auto, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        direct = torch.softmax(net(torch.cat([x, prior[:, None]], dim=1)), dim=1)
    torch.testing.assert_close(auto, direct, rtol=1e-4, atol=1e-5)
    ones = predict_sequence(net, x, roi_size=None, prior_masks=torch.ones(3, 32, 32, 32))
    assert float((ones[0] - auto[0]).abs().max()) > 1e-5


def test_bad_inputs_are_clear_errors() -> None:
    net = _net()
    with pytest.raises(InputShapeError, match="image channels"):
        predict_sequence(net, torch.zeros(1, 3, 32, 32, 32), roi_size=None)
    with pytest.raises(InputShapeError, match="multiple of 16"):
        predict_sequence(net, torch.zeros(1, 4, 32, 32, 32), roi_size=(40, 32, 32))
    with pytest.raises(InputShapeError, match="prior-mask"):
        predict_sequence(
            net,
            torch.zeros(1, 4, 32, 32, 32),
            roi_size=None,
            prior_masks=torch.zeros(1, 32, 32, 32),
        )


def test_baselines_slide_too() -> None:
    net = _net("unetr", roi_size=(32, 32, 32))
    got = predict_sequence(net, _seq(1, (40, 32, 32)), roi_size=(32, 32, 32))
    assert got.shape == (1, 2, 40, 32, 32)
    full = predict_sequence(_net("segresnet"), _seq(1, (36, 32, 32)), roi_size=None)
    assert full.shape == (1, 2, 36, 32, 32)
