"""Checkpoints: round trip, published Lightning layout, Lightning files, wrong checkpoints."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from metstrack.errors import CheckpointError
from metstrack.io.checkpoint import load_checkpoint, save_checkpoint
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.models.stt import STTUNet
from metstrack.models.weights import published_layout

SMALL = (8, 8, 16, 32, 64, 8)


@pytest.fixture
def seq() -> torch.Tensor:
    return torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(3))


def _outputs(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


@pytest.mark.parametrize("name", ["stt", "unet", "dynunet"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, seq: torch.Tensor, name: str) -> None:
    torch.manual_seed(1)
    cfg = ModelConfig(name=name, width=0.25, roi_size=(32, 32, 32))
    net = build_model(cfg)
    path = save_checkpoint(tmp_path / "m.ckpt", net, cfg, epoch=3, score=0.5)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("net.") for k in raw["state_dict"])
    assert raw["hyper_parameters"]["epoch"] == 3
    loaded, cfg2 = load_checkpoint(path)
    assert cfg2 == cfg and not loaded.training
    torch.testing.assert_close(_outputs(loaded, seq), _outputs(net, seq), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_published_layout_matches_the_network_exactly() -> None:
    for temporal, name in ((True, "stt"), (False, "unet")):
        want = published_layout(temporal=temporal)
        got = OrderedDict(
            (k, tuple(v.shape)) for k, v in build_model(ModelConfig(name=name)).state_dict().items()
        )
        assert got == want


def test_published_lightning_checkpoint_loads_with_identical_outputs(
    tmp_path: Path, seq: torch.Tensor
) -> None:
    g = torch.Generator().manual_seed(7)
    layout = published_layout(4, SMALL, 2)
    weights = OrderedDict((k, torch.randn(s, generator=g) * 0.2) for k, s in layout.items())
    ckpt = {
        "epoch": 41,
        "global_step": 1234,
        "pytorch-lightning_version": "1.9.0",
        "state_dict": OrderedDict(
            [(f"net.{k}", v) for k, v in weights.items()]
            + [("loss_fn.class_weight", torch.ones(2))]
        ),
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    path = tmp_path / "published.ckpt"
    torch.save(ckpt, path)
    loaded, cfg = load_checkpoint(path)
    assert isinstance(loaded, STTUNet)
    assert (cfg.name, cfg.in_channels, cfg.features, cfg.out_channels) == ("stt", 4, SMALL, 2)
    reference = STTUNet(ModelConfig(features=SMALL))
    reference.load_state_dict(weights, strict=True)
    torch.testing.assert_close(_outputs(loaded, seq), _outputs(reference, seq), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # lightning vs torch pytree
def test_lightning_module_checkpoint_with_self_net_loads(tmp_path: Path, seq: torch.Tensor) -> None:
    import lightning

    from metstrack.config import to_dict

    cfg = ModelConfig(width=0.25)

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"model": to_dict(cfg), "lr": 1e-3})
            self.net = build_model(cfg)

        def training_step(self, batch, batch_idx):
            return self.net(batch).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    module = Module()
    data = torch.utils.data.DataLoader([seq[:1]], batch_size=None)
    trainer = lightning.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, data)
    path = tmp_path / "lightning.ckpt"
    trainer.save_checkpoint(path)
    loaded, cfg2 = load_checkpoint(path)
    assert cfg2 == cfg
    torch.testing.assert_close(_outputs(loaded, seq), _outputs(module.net, seq), rtol=0, atol=0)


def test_wrong_architecture_lists_the_keys(tmp_path: Path) -> None:
    cfg = ModelConfig(width=0.25)
    path = save_checkpoint(tmp_path / "stt.ckpt", build_model(cfg), cfg)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, config=ModelConfig(name="unet", width=0.25))
    msg = str(exc.value)
    assert str(path) in msg and "unexpected keys" in msg and "convlstm.conv.weight" in msg
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path, config=ModelConfig(name="dynunet", width=0.25))


def test_wrong_channel_count_is_a_shape_mismatch(tmp_path: Path) -> None:
    cfg = ModelConfig(width=0.25)
    path = save_checkpoint(tmp_path / "stt.ckpt", build_model(cfg), cfg)
    with pytest.raises(CheckpointError, match=r"conv_0\.conv_0\.conv\.weight: checkpoint"):
        load_checkpoint(path, config=ModelConfig(width=0.25, prior_mask=True))


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt: not a readable"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.ckpt")
    torch.save({"state_dict": {"net.foo.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not in the published STT layout"):
        load_checkpoint(tmp_path / "other.ckpt")


def test_published_checkpoint_with_unknown_channels_needs_a_config(tmp_path: Path) -> None:
    layout = published_layout(5, SMALL, 2)
    torch.save(
        {"state_dict": {f"net.{k}": torch.zeros(s) for k, s in layout.items()}},
        tmp_path / "p5.ckpt",
    )
    with pytest.raises(CheckpointError, match="5 input channels"):
        load_checkpoint(tmp_path / "p5.ckpt")
    model, cfg = load_checkpoint(
        tmp_path / "p5.ckpt", config=ModelConfig(features=SMALL, prior_mask=True)
    )
    assert cfg.network_in_channels == 5


def test_export_checkpoint_keeps_the_network_and_writes_its_provenance(
    tmp_path: Path, seq: torch.Tensor
) -> None:
    """How the shipped model was made (metstrack/data/stt_demo.json names this call)."""
    import json

    from metstrack.io.checkpoint import export_checkpoint, training_spacing_mm

    torch.manual_seed(2)
    cfg = ModelConfig(name="stt", width=0.25, roi_size=(32, 32, 32))
    net = build_model(cfg)
    src = save_checkpoint(tmp_path / "best.ckpt", net, cfg, epoch=7, score=0.6)
    dst = export_checkpoint(src, tmp_path / "out" / "m.pt", {"input_spacing_mm": 1.5})
    assert dst == tmp_path / "out" / "m.pt"
    assert json.loads(dst.with_suffix(".json").read_text()) == {"input_spacing_mm": 1.5}
    loaded, cfg2 = load_checkpoint(dst)
    assert cfg2 == cfg
    assert torch.equal(_outputs(loaded, seq), _outputs(net, seq))
    assert training_spacing_mm(dst) == 1.5
