"""The sequence interface shared by every metstrack network.

A network maps a patient's studies in time order, ``(T, C, X, Y, Z)`` or a
batch ``(B, T, C, X, Y, Z)``, to logits of the same leading shape with K
classes. Inference drives it one study at a time through :meth:`step`, which
carries the temporal state (``None`` for networks without memory).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metstrack.errors import InvalidImageError
from metstrack.models.config import ModelConfig

#: Temporal state threaded through :meth:`SequenceModel.step` (``None``: no memory yet).
State = Any


class InputShapeError(InvalidImageError, ValueError):
    """A tensor given to a network has the wrong rank, channel count or spatial size."""


class SequenceModel(nn.Module):
    """Base class: sequence forward built on a per-study :meth:`step`.

    Attributes:
        config: The :class:`ModelConfig` the network was built from.
        temporal: True when the output for a study depends on earlier studies.
        size_divisor: Every spatial size must be a multiple of this.
        min_size: Smallest accepted spatial size along each axis.
        fixed_size: When not ``None``, the only accepted spatial size (X, Y, Z).
    """

    temporal: bool = False
    size_divisor: int = 1
    min_size: int = 1
    fixed_size: tuple[int, int, int] | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    # -- input checks --------------------------------------------------------
    def check_study(self, x_t: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` unless ``x_t`` is a valid (B, C, X, Y, Z) study batch."""
        c = self.config.network_in_channels
        if x_t.ndim != 5:
            raise InputShapeError(
                f"{self.config.name}: expected one study batch (B, C, X, Y, Z), "
                f"found shape {tuple(x_t.shape)}"
            )
        if x_t.shape[1] != c:
            extra = " (images plus the prior-mask channel)" if self.config.prior_mask else ""
            raise InputShapeError(
                f"{self.config.name}: expected {c} input channels{extra}, "
                f"found {x_t.shape[1]} in shape {tuple(x_t.shape)}"
            )
        self.check_spatial(tuple(int(s) for s in x_t.shape[2:]))

    def check_spatial(self, spatial: tuple[int, ...]) -> None:
        """Raise :class:`InputShapeError` unless ``spatial`` fits the network."""
        if self.fixed_size is not None and tuple(spatial) != tuple(self.fixed_size):
            raise InputShapeError(
                f"{self.config.name}: built for spatial size {tuple(self.fixed_size)} "
                f"(model.roi_size), found {tuple(spatial)}; use sliding-window inference "
                "(metstrack.infer.sliding.predict_sequence) for other sizes"
            )
        d = self.size_divisor
        if any(s < self.min_size for s in spatial):
            raise InputShapeError(
                f"{self.config.name}: every spatial size must be at least {self.min_size}, "
                f"found {tuple(spatial)}; use a larger patch (model.roi_size)"
            )
        if any(s % d for s in spatial):
            raise InputShapeError(
                f"{self.config.name}: every spatial size must be a multiple of {d}, found "
                f"{tuple(spatial)}; pad the volume (predict_sequence pads automatically) "
                "or pick a patch size that is a multiple of it"
            )

    @staticmethod
    def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if x.ndim == 5:
            return x[None], True
        if x.ndim == 6:
            return x, False
        raise InputShapeError(
            f"expected one patient (T, C, X, Y, Z) or a batch (B, T, C, X, Y, Z), "
            f"found shape {tuple(x.shape)}"
        )

    # -- the interface -------------------------------------------------------
    def init_state(self, x_t: torch.Tensor) -> State:
        """Initial temporal state for a batch of first studies ``x_t`` (B, C, X, Y, Z)."""
        return None

    def step(self, x_t: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Predict one study and advance the temporal state.

        Args:
            x_t: float32 (B, C, X, Y, Z) images of one study per patient.
            state: State returned by the previous step, or ``None`` for the first study
                (zero state).

        Returns:
            ``(logits, state)``: float32 (B, K, X, Y, Z) logits and the new state.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every study of a sequence.

        Args:
            x: float32 (T, C, X, Y, Z) for one patient or (B, T, C, X, Y, Z) for a
                batch, studies in time order.

        Returns:
            float32 logits (T, K, X, Y, Z) or (B, T, K, X, Y, Z).
        """
        xb, single = self._as_batch(x)
        b, t = xb.shape[:2]
        self.check_study(xb[:, 0])
        out = self.forward_batch(xb)
        return out[0] if single else out

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, X, Y, Z) -> (B, T, K, X, Y, Z); default: loop :meth:`step` over time."""
        state = None
        outs = []
        for t in range(x.shape[1]):
            logits, state = self.step(x[:, t], state)
            outs.append(logits)
        return torch.stack(outs, dim=1)

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, temporal={self.temporal}"
