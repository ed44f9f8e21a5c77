"""Segmentation-Through-Time (STT) and its no-memory ablation.

Both share MONAI's basic U-Net blocks with the published module names, so
``state_dict`` keys are exactly those of the published network::

    conv_0                  TwoConv(C, f0)                full resolution
    down_1 .. down_4        Down (max-pool + TwoConv)     1/2 .. 1/16
    convlstm.conv           Conv3d(f4 + f4, 4 f4, k=3)    1/16 (STT only)
    upcat_4 .. upcat_1      UpCat (deconv + concat + TwoConv)
    final_conv              Conv3d(f5, K, k=1)

Default widths ``(f0..f5) = (32, 32, 64, 128, 256, 32)``; instance norm with
affine, LeakyReLU(0.1), transposed-convolution upsampling (MONAI's
``BasicUNet`` defaults).
"""

from __future__ import annotations

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from metstrack.models.base import SequenceModel, State
from metstrack.models.config import ModelConfig

#: MONAI BasicUNet's defaults, which the published network used.
ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
NORM = ("instance", {"affine": True})
UPSAMPLE = "deconv"


class ConvLSTMCell(nn.Module):
    """A 3D convolutional LSTM cell (Shi et al. 2015, without peepholes).

    One convolution over ``concat(x, h)`` gives ``4 * hidden`` channels, split in
    the order input, forget, output, candidate gate::

        i, f, o = sigmoid(.), sigmoid(.), sigmoid(.);  g = tanh(.)
        c' = f * c + i * g;   h' = o * tanh(c')

    Args:
        in_channels: Channels of ``x``.
        hidden_channels: Channels of ``h`` and ``c``.
        kernel_size: Odd cubic kernel size; padding keeps the spatial size.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.conv = nn.Conv3d(
            in_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size=kernel_size,
            padding=kernel_size // 2,
            bias=True,
        )

    def zero_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h, c)`` matching ``x`` (B, C_in, X, Y, Z) in batch, space, dtype and device."""
        shape = (x.shape[0], self.hidden_channels, *x.shape[2:])
        z = torch.zeros(shape, dtype=x.dtype, device=x.device)
        return z, z.clone()

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step.

        Args:
            x: float (B, C_in, X, Y, Z).
            state: ``(h, c)``, each (B, hidden, X, Y, Z), or ``None`` for zeros.

        Returns:
            The new ``(h, c)``.
        """
        h, c = self.zero_state(x) if state is None else state
        gates = self.conv(torch.cat([x, h], dim=1))
        i, f, o, g = torch.split(gates, self.hidden_channels, dim=1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next


class BasicUNetSeq(SequenceModel):
    """MONAI's 5-level basic U-Net applied to each study independently (the ablation).

    Args:
        config: Uses ``network_in_channels``, ``out_channels``, ``scaled_features``
            and ``dropout``.
    """

    temporal = False
    size_divisor = 16
    # Instance norm at the 1/16 bottleneck needs more than one voxel per axis.
    min_size = 32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        f = config.scaled_features
        d, c = config.dropout, config.network_in_channels
        self.conv_0 = TwoConv(3, c, f[0], ACT, NORM, True, d)
        self.down_1 = Down(3, f[0], f[1], ACT, NORM, True, d)
        self.down_2 = Down(3, f[1], f[2], ACT, NORM, True, d)
        self.down_3 = Down(3, f[2], f[3], ACT, NORM, True, d)
        self.down_4 = Down(3, f[3], f[4], ACT, NORM, True, d)
        self._build_memory(f[4])
        self.upcat_4 = UpCat(3, f[4], f[3], f[3], ACT, NORM, True, d, UPSAMPLE)
        self.upcat_3 = UpCat(3, f[3], f[2], f[2], ACT, NORM, True, d, UPSAMPLE)
        self.upcat_2 = UpCat(3, f[2], f[1], f[1], ACT, NORM, True, d, UPSAMPLE)
        self.upcat_1 = UpCat(3, f[1], f[0], f[5], ACT, NORM, True, d, UPSAMPLE, halves=False)
        self.final_conv = nn.Conv3d(f[5], config.out_channels, kernel_size=1)

    def _build_memory(self, channels: int) -> None:
        """Hook for the temporal variant (declared here so module order matches the layout)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, C, X, Y, Z) -> bottleneck (N, f4, X/16, Y/16, Z/16) and skips [x0, x1, x2, x3]."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        return x4, [x0, x1, x2, x3]

    def decode(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Bottleneck features and skips -> logits (N, K, X, Y, Z)."""
        x0, x1, x2, x3 = skips
        u4 = self.upcat_4(bottleneck, x3)
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        u1 = self.upcat_1(u2, x0)
        return self.final_conv(u1)

    def step(self, x_t: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        self.check_study(x_t)
        x4, skips = self.encode(x_t)
        return self.decode(x4, skips), None

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        flat = x.reshape(b * t, *x.shape[2:])
        x4, skips = self.encode(flat)
        out = self.decode(x4, skips)
        return out.reshape(b, t, *out.shape[1:])


class STTUNet(BasicUNetSeq):
    """Segmentation-Through-Time: the basic U-Net with a ConvLSTM at the 1/16 bottleneck.

    The encoder is shared over time; the ConvLSTM (hidden size ``f4``, state
    zero at each patient's first study) runs over the bottleneck features in
    time order; the decoder takes the hidden state in place of the bottleneck
    together with the current study's skip connections and gives logits per
    study.

    Example:
        >>> net = STTUNet(ModelConfig(width=0.25))
        >>> net(torch.zeros(3, 4, 32, 32, 32)).shape
        torch.Size([3, 2, 32, 32, 32])
    """

    temporal = True

    def _build_memory(self, channels: int) -> None:
        self.convlstm = ConvLSTMCell(channels, channels, kernel_size=3)

    def init_state(self, x_t: torch.Tensor) -> State:
        """Zero ``(h, c)`` for a batch of first studies ``x_t`` (B, C, X, Y, Z)."""
        self.check_study(x_t)
        b = x_t.shape[0]
        spatial = tuple(s // 16 for s in x_t.shape[2:])
        shape = (b, self.convlstm.hidden_channels, *spatial)
        z = torch.zeros(shape, dtype=x_t.dtype, device=x_t.device)
        return z, z.clone()

    def step(self, x_t: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        self.check_study(x_t)
        x4, skips = self.encode(x_t)
        h, c = self.convlstm(x4, state)
        return self.decode(h, skips), (h, c)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        # Encoder and decoder run on all studies at once (instance norm is per
        # sample, so this equals stepping); only the ConvLSTM loops over time.
        b, t = x.shape[:2]
        x4, skips = self.encode(x.reshape(b * t, *x.shape[2:]))
        x4 = x4.reshape(b, t, *x4.shape[1:])
        state = None
        hs = []
        for i in range(t):
            state = self.convlstm(x4[:, i], state)
            hs.append(state[0])
        h = torch.stack(hs, dim=1).reshape(b * t, *x4.shape[2:])
        out = self.decode(h, skips)
        return out.reshape(b, t, *out.shape[1:])
