"""The Lightning module: one network (``self.net``), the masked loss, whole-patient validation.

Checkpoints written by Lightning hold the network's weights under ``net.``
and the model configuration in ``hyper_parameters["model"]``, so
:func:`metstrack.io.checkpoint.load_checkpoint` rebuilds the network
without this module.

Validation runs each validation patient's whole sequence through
:func:`metstrack.infer.sliding.predict_sequence` (overlapping sliding
windows, memory carried from study to study), never random crops, and scores
the labelled studies with the lesion-wise metrics
(:mod:`metstrack.train.validation`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as pl
import numpy as np
import torch

from metstrack.config import from_dict
from metstrack.core.lesions import label_components
from metstrack.infer.sliding import predict_sequence
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.train.config import TrainConfig
from metstrack.train.dataset import SequenceBatch
from metstrack.train.losses import build_loss, masked_sequence_loss
from metstrack.train.schedule import lr_factor
from metstrack.train.validation import ValidationScores, ValidationTally, score_study

log = logging.getLogger(__name__)

#: Signature of a per-validation hook: ``fn(epoch, global_step, scores)``.
ScoreHook = Callable[[int, int, dict[str, float]], None]


class SequenceSegmentationModule(pl.LightningModule):
    """Trains a sequence network on patient sequences.

    Args:
        model: The model configuration as a plain dict (``to_dict(ModelConfig)``).
        train: The whole training configuration as a plain dict (``to_dict(TrainConfig)``).

    Both are saved as hyper-parameters, so ``load_from_checkpoint`` and
    :func:`metstrack.io.checkpoint.load_checkpoint` rebuild the network.
    """

    def __init__(self, model: dict[str, Any], train: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"model": model, "train": train})
        self.model_cfg = from_dict(ModelConfig, model, where="checkpoint model")
        self.cfg = from_dict(TrainConfig, train, where="checkpoint train")
        self.net = build_model(self.model_cfg)
        self.loss_fn = build_loss(self.cfg.loss)
        self._tally = ValidationTally()
        self.score_hooks: list[ScoreHook] = []
        self.history: list[dict[str, float]] = []
        self.last_scores: ValidationScores | None = None

    # -- training --------------------------------------------------------------------
    def network_input(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, T, C', X, Y, Z) input: images, plus the prior mask in prior-mask mode."""
        if self.model_cfg.prior_mask:
            if batch.prior is None:
                raise ValueError("prior-mask model but the batch carries no prior mask")
            return torch.cat([batch.image, batch.prior], dim=2)
        return batch.image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, K, X, Y, Z) of the network for input (B, T, C', X, Y, Z)."""
        return self.net(x)

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> torch.Tensor:
        """Masked loss over the labelled studies of a batch of sequences."""
        logits = self.net(self.network_input(batch))
        mask = batch.has_label & batch.valid
        loss, n = masked_sequence_loss(self.loss_fn, logits, batch.label, mask)
        bsz = int(batch.image.shape[0])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bsz)
        self.log("train/labelled_studies", float(n), on_step=True, on_epoch=False, batch_size=bsz)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with the warm-up and decay of :func:`metstrack.train.schedule.lr_factor`."""
        o = self.cfg.optim
        opt = torch.optim.AdamW(
            self.net.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
        )
        total = self._planned_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total_steps=total, cfg=o)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _planned_steps(self) -> int:
        if self.cfg.trainer.max_steps > 0:
            return int(self.cfg.trainer.max_steps)
        try:
            est = self.trainer.estimated_stepping_batches
        except (RuntimeError, AttributeError, ValueError):
            est = math.inf
        if est is None or not math.isfinite(est):
            log.info("no step or epoch limit: the learning rate stays constant after warm-up")
            return 10**9
        return max(int(est), 1)

    # -- validation ------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._tally = ValidationTally()

    def validation_step(self, batch: SequenceBatch, batch_idx: int) -> None:
        """Predict whole patients (memory carried) and tally their labelled studies."""
        v = self.cfg.validation
        for b in range(batch.image.shape[0]):
            if not bool(batch.count[b]):
                continue  # a repeat that evens out DDP shards
            n = int(batch.valid[b].sum())
            probs = self.predict_patient(batch.image[b, :n])
            labels = batch.label[b, :n, 0].cpu().numpy() > 0.5
            spacing_mm = tuple(float(s) for s in batch.spacing_mm[b].tolist())
            for t in range(n):
                if not bool(batch.has_label[b, t]):
                    continue
                pred = probs[t, 1].float().cpu().numpy() >= v.threshold
                if v.min_lesion_volume_mm3 > 0:
                    pred = _drop_small(pred, v.min_lesion_volume_mm3, spacing_mm)
                self._tally += score_study(pred, labels[t], spacing_mm=spacing_mm)  # type: ignore[arg-type]

    def predict_patient(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (T, K, X, Y, Z) of one whole patient, memory carried in time."""
        return predict_sequence(
            self.net,
            images,
            roi_size=tuple(self.model_cfg.roi_size),
            overlap=self.cfg.validation.overlap,
        )

    def on_validation_epoch_end(self) -> None:
        """Sum the tallies over processes, log the scores and call the score hooks."""
        counts = torch.as_tensor(self._tally.as_array(), device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        tally = ValidationTally.from_array(counts.detach().cpu().double().numpy())
        scores = ValidationScores.of(tally, self.cfg.validation.score)
        for key, value in scores.as_dict().items():
            val = 0.0 if (key == "score" and math.isnan(value)) else value
            # values are already summed over processes; sync_dist averages equal values
            self.log(f"val/{key}", float(val), sync_dist=True)
        self.last_scores = scores
        if not self.trainer.sanity_checking:
            row = {
                "epoch": float(self.current_epoch),
                "step": float(self.global_step),
                **scores.as_dict(),
            }
            self.history.append(row)
            for hook in self.score_hooks:
                hook(int(self.current_epoch), int(self.global_step), scores.as_dict())


def _drop_small(pred: np.ndarray, min_mm3: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Drop predicted components smaller than ``min_mm3`` (voxel volume from ``spacing_mm``)."""
    comps, n = label_components(pred)
    if n == 0:
        return pred
    vox_mm3 = float(np.prod(spacing_mm))
    counts = np.bincount(comps.ravel(), minlength=n + 1)
    keep = counts * vox_mm3 >= min_mm3
    keep[0] = False
    return keep[comps]
