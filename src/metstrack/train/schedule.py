"""Learning-rate schedule: linear warm-up, then cosine or polynomial decay."""

from __future__ import annotations

import math

from metstrack.train.config import OptimConfig


def lr_factor(step: int, *, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warm-up rises linearly from 0.01 to 1 over ``cfg.warmup_steps``; afterwards
    ``"cosine"`` falls along half a cosine and ``"poly"`` as
    ``(1 - progress) ** poly_power``, both to ``cfg.min_lr_ratio`` at
    ``total_steps``; ``"constant"`` stays at 1.

    Args:
        step: Optimizer steps taken so far.
        total_steps: Planned optimizer steps of the run (>= 1).
        cfg: Schedule settings.
    """
    warm = max(int(cfg.warmup_steps), 0)
    if warm and step < warm:
        return 0.01 + 0.99 * step / warm
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - warm, 1)
    progress = min(max((step - warm) / span, 0.0), 1.0)
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lo + (1.0 - lo) * (1.0 - progress) ** cfg.poly_power
