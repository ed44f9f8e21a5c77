"""The typed configuration every network is built from (:class:`ModelConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from metstrack.errors import ConfigError
from metstrack.types import MODALITIES

#: Published STT feature widths: five encoder levels and the last decoder width.
DEFAULT_FEATURES: tuple[int, int, int, int, int, int] = (32, 32, 64, 128, 256, 32)


@dataclass(frozen=True)
class ModelConfig:
    """Settings of one network; saved inside every checkpoint.

    Attributes:
        name: Registry name (``"stt"``, ``"stt-ms"``, ``"unet"``, ``"dynunet"``, ``"segresnet"``,
            ``"unetr"``, ``"swinunetr"``); see :mod:`metstrack.models.registry`.
        in_channels: Image channels per study (MRI contrasts), without the prior mask.
        out_channels: Classes K of the logits (2: background, metastasis).
        features: Basic U-Net widths: five encoder levels then the last decoder
            width (published: 32, 32, 64, 128, 256, 32). The ConvLSTM hidden size
            equals the bottleneck width ``features[4]``. Baselines take their base
            width from ``features[0]``.
        width: Multiplier applied to every width (``0.25`` gives a CPU-trainable model).
        prior_mask: Add one input channel holding the previous study's registered
            mask (zeros for the first study).
        modalities: Contrast of each image channel, in channel order
            (``len(modalities) == in_channels``).
        roi_size: Patch size (X, Y, Z) in voxels used for training patches and
            sliding-window inference; UNETR is built for exactly this size.
        dropout: Dropout probability inside the convolution blocks.
    """

    name: str = "stt"
    in_channels: int = 4
    out_channels: int = 2
    features: tuple[int, ...] = DEFAULT_FEATURES
    width: float = 1.0
    prior_mask: bool = False
    modalities: tuple[str, ...] = MODALITIES
    roi_size: tuple[int, ...] = (96, 96, 96)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.out_channels < 1:
            raise ConfigError(
                f"model: in_channels and out_channels must be >= 1, found "
                f"{self.in_channels} and {self.out_channels}"
            )
        if len(self.features) != 6 or any(int(f) < 1 for f in self.features):
            raise ConfigError(
                f"model.features: expected six positive widths (five encoder levels and the "
                f"last decoder width, e.g. {list(DEFAULT_FEATURES)}), found {list(self.features)}"
            )
        if not self.width > 0:
            raise ConfigError(f"model.width: must be > 0, found {self.width}")
        if len(self.modalities) != self.in_channels:
            raise ConfigError(
                f"model: {len(self.modalities)} modalities {list(self.modalities)} for "
                f"in_channels={self.in_channels}; give one modality name per image channel"
            )
        if len(self.roi_size) != 3 or any(int(r) < 1 for r in self.roi_size):
            raise ConfigError(
                f"model.roi_size: expected three positive sizes, found {self.roi_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), found {self.dropout}")

    @property
    def network_in_channels(self) -> int:
        """Channels the network receives per study: images plus the prior mask if enabled."""
        return self.in_channels + int(self.prior_mask)

    @property
    def scaled_features(self) -> tuple[int, ...]:
        """``features`` multiplied by ``width`` (rounded, at least 2 each)."""
        return tuple(scale_width(f, self.width) for f in self.features)


def scale_width(n: int, width: float, *, multiple: int = 1, minimum: int = 2) -> int:
    """Scale a channel count by ``width``, rounded to ``multiple`` and at least ``minimum``."""
    v = round(int(n) * float(width) / multiple) * multiple
    return max(int(v), minimum, multiple)
