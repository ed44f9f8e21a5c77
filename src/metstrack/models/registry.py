"""Build any metstrack network by name from a :class:`~metstrack.models.config.ModelConfig`.

=============  ==============================================================
name           network
=============  ==============================================================
``stt``        Segmentation-Through-Time: basic U-Net + ConvLSTM bottleneck
``stt-ms``     STT with memory also at every skip level (full to 1/8 resolution)
``unet``       the same basic U-Net without memory (the ablation)
``dynunet``    MONAI DynUNet, nnU-Net-style
``segresnet``  MONAI SegResNet
``unetr``      MONAI UNETR (fixed input size ``roi_size``)
``swinunetr``  MONAI SwinUNETR (sizes multiple of 32)
=============  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable

from metstrack.errors import ConfigError, did_you_mean
from metstrack.models.base import SequenceModel
from metstrack.models.baselines import DynUNetSeq, SegResNetSeq, SwinUNETRSeq, UNETRSeq
from metstrack.models.config import ModelConfig
from metstrack.models.stt import BasicUNetSeq, STTUNet
from metstrack.models.stt_ms import STTMultiScale

#: Every registered network, by name.
MODELS: dict[str, Callable[[ModelConfig], SequenceModel]] = {
    "stt": STTUNet,
    "stt-ms": STTMultiScale,
    "unet": BasicUNetSeq,
    "dynunet": DynUNetSeq,
    "segresnet": SegResNetSeq,
    "unetr": UNETRSeq,
    "swinunetr": SwinUNETRSeq,
}


def build_model(cfg: ModelConfig) -> SequenceModel:
    """Build the network named ``cfg.name``.

    Args:
        cfg: The model configuration.

    Returns:
        A :class:`~metstrack.models.base.SequenceModel` (``.config`` is ``cfg``,
        ``.temporal`` tells whether it has memory), in training mode.

    Raises:
        ConfigError: Unknown name (with the valid names and a suggestion).
    """
    try:
        cls = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(
            f"model.name: unknown network {cfg.name!r}; {did_you_mean(cfg.name, MODELS)}"
        ) from None
    return cls(cfg)
