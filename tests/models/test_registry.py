"""The model registry: every network by name, the sequence interface, did-you-mean."""

from __future__ import annotations

import pytest
import torch

from metstrack.errors import ConfigError
from metstrack.models.base import InputShapeError, SequenceModel
from metstrack.models.config import ModelConfig
from metstrack.models.registry import MODELS, build_model

# (name, spatial size) small enough for a CPU test
CASES = [
    ("stt", 32),
    ("stt-ms", 32),
    ("unet", 32),
    ("dynunet", 32),
    ("segresnet", 32),
    ("unetr", 32),
    ("swinunetr", 64),
]


# every network with and without the prior-mask channel; SwinUNETR (the slowest) runs once
RUNS = [(n, s, p) for n, s in CASES for p in (False, True) if not (n == "swinunetr" and p)]


@pytest.mark.parametrize(("name", "size", "prior"), RUNS)
def test_each_network_runs_the_sequence_interface(name: str, size: int, prior: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, width=0.25, roi_size=(size,) * 3, prior_mask=prior)
    net = build_model(cfg).eval()
    assert isinstance(net, SequenceModel) and net.config is cfg
    assert net.temporal == name.startswith("stt")
    t = 1 if name == "swinunetr" else 2  # keep the slowest network to one study
    x = torch.randn(t, 4 + int(prior), size, size, size)
    with torch.no_grad():
        y = net(x)
        if name != "swinunetr":
            assert net(x[None]).shape == (1, t, 2, size, size, size)
            step, _ = net.step(x[-1:], None)
            if not net.temporal:
                torch.testing.assert_close(step[0], y[-1], rtol=1e-4, atol=1e-4)
    assert y.shape == (t, 2, size, size, size)


def test_all_registered_names_are_tested() -> None:
    assert {n for n, _ in CASES} == set(MODELS)


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'segresnet'"):
        build_model(ModelConfig(name="segresnt"))


def test_unetr_is_fixed_size() -> None:
    net = build_model(ModelConfig(name="unetr", width=0.25, roi_size=(32, 32, 32)))
    with pytest.raises(InputShapeError, match="roi_size"):
        net(torch.zeros(1, 4, 48, 48, 48))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": (1, 2, 3)}, "six positive widths"),
        ({"width": 0.0}, "width"),
        ({"in_channels": 3}, "modalities"),
        ({"roi_size": (32, 32)}, "roi_size"),
    ],
)
def test_invalid_configs_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)
