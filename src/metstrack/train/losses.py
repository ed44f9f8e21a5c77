"""Segmentation losses (MONAI) and the masked per-study sequence loss.

``build_loss`` returns a MONAI loss taking logits (N, K, X, Y, Z) and an
integer target (N, 1, X, Y, Z) (softmax over classes, one-hot target).
``masked_sequence_loss`` applies it only to studies whose label trains the
model: a study without a label still runs through the network and feeds the
memory, but is excluded from the loss, so its logits receive no gradient
from its own (absent) label.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, GeneralizedDiceLoss, TverskyLoss

from metstrack.errors import ConfigError, did_you_mean
from metstrack.train.config import LOSS_NAMES, LossConfig


def build_loss(cfg: LossConfig) -> torch.nn.Module:
    """Build the MONAI loss named by ``cfg.name`` (one of :data:`LOSS_NAMES`).

    Raises:
        ConfigError: Unknown name, with the valid names and a suggestion.
    """
    common = {"include_background": cfg.include_background, "to_onehot_y": True, "softmax": True}
    name = cfg.name
    if name == "dice":
        return DiceLoss(**common)
    if name == "dicece":
        return DiceCELoss(**common, lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_other)
    if name == "dicefocal":
        return DiceFocalLoss(
            **common,
            gamma=cfg.focal_gamma,
            lambda_dice=cfg.lambda_dice,
            lambda_focal=cfg.lambda_other,
        )
    if name == "generalized_dice":
        return GeneralizedDiceLoss(**common)
    if name == "tversky":
        return TverskyLoss(**common, alpha=cfg.tversky_alpha, beta=cfg.tversky_beta)
    raise ConfigError(f"[loss] name {name!r} is unknown; {did_you_mean(name, LOSS_NAMES)}")


def masked_sequence_loss(
    loss_fn: torch.nn.Module,
    logits: torch.Tensor,
    label: torch.Tensor,
    has_label: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """Loss over the labelled studies of a batch of sequences.

    Args:
        loss_fn: A loss from :func:`build_loss`.
        logits: float (B, T, K, X, Y, Z) network outputs.
        label: float or int (B, T, 1, X, Y, Z) class indices.
        has_label: bool (B, T); padded and unlabelled studies are False.

    Returns:
        ``(loss, n)``: the loss averaged over the ``n`` labelled studies. With
        ``n == 0`` the loss is ``0 * logits.sum()``: zero, but still connected
        to every parameter so distributed gradient synchronisation works.
    """
    if logits.shape[:2] != has_label.shape:
        raise ValueError(
            f"logits (B, T) = {tuple(logits.shape[:2])} and has_label {tuple(has_label.shape)} differ"
        )
    sel = has_label.reshape(-1).bool()
    n = int(sel.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    flat_logits = logits.reshape(-1, *logits.shape[2:])[sel]
    flat_label = label.reshape(-1, *label.shape[2:])[sel]
    return loss_fn(flat_logits.float(), flat_label.float()), n
