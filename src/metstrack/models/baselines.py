"""MONAI baselines wrapped to the sequence interface (each study predicted independently).

Every wrapper holds the MONAI network as ``backbone`` and flattens the time
axis into the batch, so a patient ``(T, C, X, Y, Z)`` gives ``(T, K, X, Y, Z)``
logits exactly like :class:`~metstrack.models.stt.STTUNet`, without memory.
Widths follow ``ModelConfig.width`` so tiny versions run on a CPU.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNETR, DynUNet, SegResNet, SwinUNETR
from torch import nn

from metstrack.models.base import SequenceModel, State
from metstrack.models.config import ModelConfig, scale_width


class PerStudyModel(SequenceModel):
    """Base wrapper: a 3D segmentation network run on each study of a sequence."""

    temporal = False

    def __init__(self, config: ModelConfig, backbone: nn.Module) -> None:
        super().__init__(config)
        self.backbone = backbone

    def step(self, x_t: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        self.check_study(x_t)
        return self.backbone(x_t), None

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        out = self.backbone(x.reshape(b * t, *x.shape[2:]))
        return out.reshape(b, t, *out.shape[1:])


class DynUNetSeq(PerStudyModel):
    """nnU-Net-style DynUNet: five levels, 3^3 kernels, stride-2 down-sampling, instance norm.

    Filters are ``scaled_features[:5]`` (32, 32, 64, 128, 256 at width 1), the
    same encoder widths as STT, so the comparison isolates the architecture.
    """

    size_divisor = 16
    # Instance norm at the 1/16 bottleneck needs more than one voxel per axis.
    min_size = 32

    def __init__(self, config: ModelConfig) -> None:
        strides = [1, 2, 2, 2, 2]
        net = DynUNet(
            spatial_dims=3,
            in_channels=config.network_in_channels,
            out_channels=config.out_channels,
            kernel_size=[3] * len(strides),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=list(config.scaled_features[:5]),
            dropout=config.dropout or None,
            norm_name=("INSTANCE", {"affine": True}),
            deep_supervision=False,
            res_block=False,
        )
        super().__init__(config, net)


class SegResNetSeq(PerStudyModel):
    """MONAI SegResNet (BraTS-style residual encoder); 16 initial filters at width 1."""

    size_divisor = 8

    def __init__(self, config: ModelConfig) -> None:
        net = SegResNet(
            spatial_dims=3,
            init_filters=scale_width(16, config.width, multiple=8, minimum=8),
            in_channels=config.network_in_channels,
            out_channels=config.out_channels,
            dropout_prob=config.dropout or None,
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
        )
        super().__init__(config, net)


class UNETRSeq(PerStudyModel):
    """MONAI UNETR (ViT encoder, 16^3 patches) built for exactly ``config.roi_size``.

    At width 1: feature size 16, hidden size 768, MLP 3072, 12 heads.
    """

    size_divisor = 16

    def __init__(self, config: ModelConfig) -> None:
        hidden = scale_width(768, config.width, multiple=12, minimum=12)
        net = UNETR(
            in_channels=config.network_in_channels,
            out_channels=config.out_channels,
            img_size=tuple(int(r) for r in config.roi_size),
            feature_size=scale_width(16, config.width, minimum=2),
            hidden_size=hidden,
            mlp_dim=4 * hidden,
            num_heads=12,
            norm_name="instance",
            dropout_rate=config.dropout,
        )
        super().__init__(config, net)
        self.fixed_size = tuple(int(r) for r in config.roi_size)  # type: ignore[assignment]


class SwinUNETRSeq(PerStudyModel):
    """MONAI SwinUNETR (shifted-window transformer encoder); feature size 48 at width 1.

    Sizes must be multiples of 32 and at least 64 (its deepest level is at 1/32
    and instance norm needs more than one voxel there).
    """

    size_divisor = 32
    min_size = 64

    def __init__(self, config: ModelConfig) -> None:
        net = SwinUNETR(
            in_channels=config.network_in_channels,
            out_channels=config.out_channels,
            feature_size=scale_width(48, config.width, multiple=12, minimum=12),
            drop_rate=config.dropout,
            norm_name="instance",
        )
        super().__init__(config, net)
