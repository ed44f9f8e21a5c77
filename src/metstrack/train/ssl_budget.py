"""A Lightning callback that stops training when the process has used a CPU-time budget.

Wall-clock limits (``trainer.time_budget_min``) are unfair on a shared
machine; comparisons "under the same CPU budget" (e.g.
``benchmarks/pretrain_benefit.py``) count the process's CPU seconds instead,
from a start point chosen by the caller (so data preparation can count too).
"""

from __future__ import annotations

import logging
import time

import lightning as pl
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class CpuTimeBudget(Callback):
    """Stop ``fit`` once ``time.process_time() - start_cpu_s`` exceeds ``budget_cpu_s``.

    Args:
        budget_cpu_s: CPU seconds allowed (all threads of this process).
        start_cpu_s: ``time.process_time()`` at the start of the budget; default now.
    """

    def __init__(self, budget_cpu_s: float, *, start_cpu_s: float | None = None) -> None:
        super().__init__()
        self.budget_cpu_s = float(budget_cpu_s)
        self.start_cpu_s = time.process_time() if start_cpu_s is None else float(start_cpu_s)
        self.stopped = False

    @property
    def used_cpu_s(self) -> float:
        """CPU seconds used since the start."""
        return time.process_time() - self.start_cpu_s

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object) -> None:
        if self.used_cpu_s >= self.budget_cpu_s:
            if not self.stopped:
                log.info("CPU budget of %.0f s used up; stopping", self.budget_cpu_s)
            self.stopped = True
            trainer.should_stop = True
