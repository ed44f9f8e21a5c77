"""Network weights as tensors: the published STT key layout and shape checks (no file I/O).

Files are read and written by :mod:`metstrack.io.checkpoint`; this module only
looks at state dicts already in memory:

* :func:`published_layout` lists every parameter name and shape of the
  published network,
* :func:`infer_config` reads a configuration back from the tensor shapes,
* :func:`check_state_fits` names every key that does not fit a network.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

from metstrack.errors import CheckpointError
from metstrack.models.config import ModelConfig
from metstrack.types import MODALITIES

#: Keys listed in a message before "and N more".
SHOWN_KEYS = 12


def published_layout(
    in_channels: int = 4,
    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
    out_channels: int = 2,
    *,
    temporal: bool = True,
) -> OrderedDict[str, tuple[int, ...]]:
    """Every parameter name and shape of the published STT network (without ``net.``).

    The network is MONAI's basic U-Net (``TwoConv`` = two conv-norm-act units
    ``conv_0``/``conv_1``, each ``conv`` + instance norm ``adn.N``; ``Down`` =
    max-pool + ``convs``; ``UpCat`` = ``upsample.deconv`` + ``convs``) with a
    ConvLSTM cell ``convlstm.conv`` at the bottleneck.

    Args:
        in_channels: Input channels per study.
        features: (f0, f1, f2, f3, f4, f5) widths.
        out_channels: Classes K.
        temporal: Include the ConvLSTM (False gives the no-memory ablation).

    Returns:
        Ordered mapping of state-dict key to tensor shape.
    """
    f0, f1, f2, f3, f4, f5 = (int(f) for f in features)
    out: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def two_conv(prefix: str, cin: int, cout: int) -> None:
        for i, ci in enumerate((cin, cout)):
            out[f"{prefix}.conv_{i}.conv.weight"] = (cout, ci, 3, 3, 3)
            out[f"{prefix}.conv_{i}.conv.bias"] = (cout,)
            out[f"{prefix}.conv_{i}.adn.N.weight"] = (cout,)
            out[f"{prefix}.conv_{i}.adn.N.bias"] = (cout,)

    two_conv("conv_0", in_channels, f0)
    for i, (a, b) in enumerate(((f0, f1), (f1, f2), (f2, f3), (f3, f4)), start=1):
        two_conv(f"down_{i}.convs", a, b)
    if temporal:
        out["convlstm.conv.weight"] = (4 * f4, 2 * f4, 3, 3, 3)
        out["convlstm.conv.bias"] = (4 * f4,)
    # upcat_k: deconv halves the channels (except upcat_1), concat with the skip, TwoConv.
    for name, cin, cat, cout, halves in (
        ("upcat_4", f4, f3, f3, True),
        ("upcat_3", f3, f2, f2, True),
        ("upcat_2", f2, f1, f1, True),
        ("upcat_1", f1, f0, f5, False),
    ):
        up = cin // 2 if halves else cin
        out[f"{name}.upsample.deconv.weight"] = (cin, up, 2, 2, 2)
        out[f"{name}.upsample.deconv.bias"] = (up,)
        two_conv(f"{name}.convs", cat + up, cout)
    out["final_conv.weight"] = (out_channels, f5, 1, 1, 1)
    out["final_conv.bias"] = (out_channels,)
    return out


def infer_config(
    state: Mapping[str, torch.Tensor], *, path: str | Path | None = None
) -> ModelConfig:
    """Read a basic-U-Net/STT configuration from the tensor shapes of a state dict.

    Args:
        state: Network state dict without the ``net.`` prefix.
        path: File to name in errors.

    Raises:
        CheckpointError: The keys are not those of the published layout, or the
            channel count has no known modality order.
    """
    names = {
        "conv_0": "conv_0.conv_0.conv.weight",
        **{f"down_{i}": f"down_{i}.convs.conv_0.conv.weight" for i in range(1, 5)},
        "upcat_1": "upcat_1.convs.conv_1.conv.weight",
        "final_conv": "final_conv.weight",
    }
    missing = [k for k in names.values() if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: carries no model configuration and is not in the published STT layout "
            f"(missing {', '.join(missing[:SHOWN_KEYS])}); pass the ModelConfig it was trained with"
        )
    first = state[names["conv_0"]]
    in_ch = int(first.shape[1])
    feats = (
        int(first.shape[0]),
        *(int(state[names[f"down_{i}"]].shape[0]) for i in range(1, 5)),
        int(state[names["upcat_1"]].shape[0]),
    )
    if in_ch != len(MODALITIES):
        raise CheckpointError(
            f"{path}: carries no model configuration and has {in_ch} input channels; the "
            f"modality order is only known for {len(MODALITIES)} ({', '.join(MODALITIES)}); "
            "pass the ModelConfig (modalities, prior_mask) it was trained with"
        )
    return ModelConfig(
        name="stt" if "convlstm.conv.weight" in state else "unet",
        in_channels=in_ch,
        out_channels=int(state[names["final_conv"]].shape[0]),
        features=feats,
        width=1.0,
    )


def check_state_fits(
    path: str | Path, model: torch.nn.Module, state: Mapping[str, torch.Tensor], cfg: ModelConfig
) -> None:
    """Raise :class:`CheckpointError` listing every key that does not fit ``model``."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(want[k].shape)}"
        for k in want
        if k in state and tuple(state[k].shape) != tuple(want[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN_KEYS])}{more}")
    raise CheckpointError(
        f"{path}: weights do not fit network {cfg.name!r} with "
        f"{cfg.network_in_channels} input channels and widths {list(cfg.scaled_features)}: "
        + "; ".join(parts)
        + "; the checkpoint was trained with another architecture or channel count, "
        "give the matching model configuration"
    )
