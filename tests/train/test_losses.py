"""Losses by name and the masked sequence loss (checked through gradients)."""

from __future__ import annotations

import pytest
import torch

from metstrack.errors import ConfigError
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.train.config import LOSS_NAMES, LossConfig
from metstrack.train.losses import build_loss, masked_sequence_loss

TINY = ModelConfig(
    name="stt", width=0.0625, roi_size=(16, 16, 16), in_channels=2, modalities=("T1", "CT1")
)


def _batch(T=2, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, T, 2, n, n, n, generator=g)
    y = (torch.rand(1, T, 1, n, n, n, generator=g) > 0.9).float()
    return x, y


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_builds_and_is_finite(name):
    loss = build_loss(LossConfig(name=name))
    logits = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8, 8) > 0.8).float()
    value = loss(logits, target)
    assert torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_unknown_loss_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'dicece'"):
        build_loss(LossConfig(name="dicec"))


def test_unlabelled_studies_get_no_gradient_from_their_labels():
    loss_fn = build_loss(LossConfig())
    logits = torch.randn(1, 3, 2, 8, 8, 8, requires_grad=True)
    label = (torch.rand(1, 3, 1, 8, 8, 8) > 0.8).float()
    has = torch.tensor([[True, False, True]])
    loss, n = masked_sequence_loss(loss_fn, logits, label, has)
    assert n == 2
    loss.backward()
    assert float(logits.grad[0, 1].abs().sum()) == 0.0
    assert float(logits.grad[0, 0].abs().sum()) > 0 and float(logits.grad[0, 2].abs().sum()) > 0
    # changing the unlabelled study's label does not change the loss
    other = label.clone()
    other[0, 1] = 1 - other[0, 1]
    loss2, _ = masked_sequence_loss(loss_fn, logits, other, has)
    assert torch.equal(loss.detach(), loss2.detach())


def test_no_labelled_study_gives_zero_loss_still_connected():
    loss_fn = build_loss(LossConfig())
    logits = torch.randn(1, 2, 2, 8, 8, 8, requires_grad=True)
    loss, n = masked_sequence_loss(
        loss_fn, logits, torch.ones(1, 2, 1, 8, 8, 8), torch.zeros(1, 2, dtype=torch.bool)
    )
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_unlabelled_study_feeds_the_memory_but_adds_no_loss():
    """Through the network's parameter gradients: label of study 0 is ignored, its image is not."""
    torch.manual_seed(0)
    net = build_model(TINY)
    loss_fn = build_loss(LossConfig())
    x, y = _batch()
    has = torch.tensor([[False, True]])

    def grads(x, y):
        net.zero_grad()
        loss, _ = masked_sequence_loss(loss_fn, net(x), y, has)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]).clone()

    g0 = grads(x, y)
    y2 = y.clone()
    y2[0, 0] = 1 - y2[0, 0]
    assert torch.allclose(g0, grads(x, y2), atol=0, rtol=0)  # its label adds nothing
    x2 = x.clone()
    x2[0, 0] = torch.randn_like(x2[0, 0]) * 3
    assert not torch.allclose(g0, grads(x2, y))  # its image reaches later studies through memory
