"""STT with memory at every scale (``stt-ms``): time where small metastases live.

The published STT (:class:`~metstrack.models.stt.STTUNet`) remembers earlier
studies only in its ConvLSTM at the 1/16 bottleneck. At 1 mm a 5 mm3 metastasis
spans about two voxels: at 1/16 resolution it is a small fraction of one
bottleneck voxel, so the memory that is meant to find it can hardly see it.

``stt-ms`` keeps the STT unchanged (same modules and names, so a trained STT
checkpoint loads into it) and adds one convolutional GRU per skip level
(full, 1/2, 1/4 and 1/8 resolution). At each study the GRU of level ``l``
updates its state ``g_l`` from that study's skip features ``x_l``, and the
decoder receives ``x_l + P_l(g_l)``, where ``P_l`` is a 1x1x1 convolution
initialised to zero::

    g_l(t) = GRU_l(x_l(t), g_l(t-1))        (g_l(-1) = 0)
    skip_l(t) = x_l(t) + P_l(g_l(t))        (P_l = 0 at initialisation)

With ``P_l = 0`` the network computes exactly what STT computes, so training
from an STT checkpoint (``trainer.init_weights``) starts from that model and
lets the high-resolution memory grow in only as far as it helps (the
"zero-convolution" trick of adapter layers).

Cost: the state of level ``l`` has the skip's width at its resolution, so
sliding-window inference caches, per window, about ``f0 + f1/8 + f2/64 + f3/512``
full-resolution channels besides the bottleneck state (width 0.25: about 9 channels,
30 MB per 96^3 window).

Module layout (``state_dict`` keys): those of STT, plus ``skip_memory.<l>.gates``,
``skip_memory.<l>.candidate`` and ``skip_proj.<l>`` for ``l`` in 0..3.
"""

from __future__ import annotations

import torch
from torch import nn

from metstrack.models.base import State
from metstrack.models.config import ModelConfig
from metstrack.models.stt import STTUNet

#: Skip levels carrying memory: 0 = full resolution, 1 = 1/2, 2 = 1/4, 3 = 1/8.
MEMORY_LEVELS: tuple[int, ...] = (0, 1, 2, 3)


class ConvGRUCell(nn.Module):
    """A 3D convolutional GRU cell (Ballas et al. 2016).

    ::

        z, r = sigmoid(W_g * [x, h])          update and reset gates
        n = tanh(W_n * [x, r h])              candidate
        h' = (1 - z) h + z n

    Args:
        in_channels: Channels of ``x``.
        hidden_channels: Channels of ``h``.
        kernel_size: Odd cubic kernel size; padding keeps the spatial size.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        pad = kernel_size // 2
        self.gates = nn.Conv3d(
            in_channels + hidden_channels, 2 * hidden_channels, kernel_size, padding=pad
        )
        self.candidate = nn.Conv3d(
            in_channels + hidden_channels, hidden_channels, kernel_size, padding=pad
        )

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One time step: ``x`` (B, C_in, X, Y, Z) and ``h`` (B, hidden, X, Y, Z) or ``None``.

        Returns:
            The new hidden state (B, hidden, X, Y, Z).
        """
        if h is None:
            h = x.new_zeros((x.shape[0], self.hidden_channels, *x.shape[2:]))
        z, r = torch.split(
            torch.sigmoid(self.gates(torch.cat([x, h], dim=1))), self.hidden_channels, dim=1
        )
        n = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * n


class STTMultiScale(STTUNet):
    """Segmentation-Through-Time with memory at the bottleneck and at every skip level.

    The temporal state is a flat tuple ``(h, c, g_0, g_1, g_2, g_3)``: the
    bottleneck ConvLSTM's hidden and cell state and the skip GRUs' states, each
    batch-first, so sliding-window inference carries it per window like STT's.

    Example:
        >>> net = STTMultiScale(ModelConfig(name="stt-ms", width=0.25))
        >>> net(torch.zeros(3, 4, 32, 32, 32)).shape
        torch.Size([3, 2, 32, 32, 32])
    """

    temporal = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        f = config.scaled_features
        widths = [f[level] for level in MEMORY_LEVELS]
        self.skip_memory = nn.ModuleList(ConvGRUCell(w, w) for w in widths)
        self.skip_proj = nn.ModuleList(nn.Conv3d(w, w, kernel_size=1) for w in widths)
        for proj in self.skip_proj:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _remember(
        self, skips: list[torch.Tensor], memory: list[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Update each level's GRU from this study's skips; return the fused skips and states."""
        fused = list(skips)
        states = []
        for i, level in enumerate(MEMORY_LEVELS):
            g = self.skip_memory[i](skips[level], memory[i])
            fused[level] = skips[level] + self.skip_proj[i](g)
            states.append(g)
        return fused, states

    def init_state(self, x_t: torch.Tensor) -> State:
        """Zero state for a batch of first studies ``x_t`` (B, C, X, Y, Z)."""
        h, c = super().init_state(x_t)
        b, spatial = x_t.shape[0], x_t.shape[2:]
        gs = []
        for i, level in enumerate(MEMORY_LEVELS):
            size = tuple(s // 2**level for s in spatial)
            gs.append(x_t.new_zeros((b, self.skip_memory[i].hidden_channels, *size)))
        return (h, c, *gs)

    def step(self, x_t: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        self.check_study(x_t)
        x4, skips = self.encode(x_t)
        lstm_state = None if state is None else (state[0], state[1])
        memory = [None] * len(MEMORY_LEVELS) if state is None else list(state[2:])
        h, c = self.convlstm(x4, lstm_state)
        fused, gs = self._remember(skips, memory)
        return self.decode(h, fused), (h, c, *gs)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        # Encoder and decoder run on all studies at once; only the memories loop over time.
        b, t = x.shape[:2]
        x4, skips = self.encode(x.reshape(b * t, *x.shape[2:]))
        x4 = x4.reshape(b, t, *x4.shape[1:])
        skips_t = [s.reshape(b, t, *s.shape[1:]) for s in skips]
        lstm_state = None
        memory: list[torch.Tensor | None] = [None] * len(MEMORY_LEVELS)
        hs, fused_t = [], []
        for i in range(t):
            lstm_state = self.convlstm(x4[:, i], lstm_state)
            hs.append(lstm_state[0])
            fused, memory = self._remember([s[:, i] for s in skips_t], memory)
            fused_t.append(fused)
        h = torch.stack(hs, dim=1).reshape(b * t, *x4.shape[2:])
        fused_skips = [
            torch.stack([f[k] for f in fused_t], dim=1).reshape(b * t, *skips[k].shape[1:])
            for k in range(len(skips))
        ]
        out = self.decode(h, fused_skips)
        return out.reshape(b, t, *out.shape[1:])
