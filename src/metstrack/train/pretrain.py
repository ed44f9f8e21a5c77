"""Self-supervised pretraining of the shared encoder and decoder on every study of a cohort.

Objectives (``[objective] name``):

``restore`` (Models Genesis, corrupt-and-restore)
    Each study of a patient window is corrupted independently
    (:mod:`metstrack.train.ssl_corrupt`: Bezier intensity transform, local
    pixel shuffling, in-/out-painting) and the whole network (encoder,
    ConvLSTM for STT, decoder) restores the original z-scored images; the
    loss is the mean squared error over every voxel and channel of every
    study. The restoration network is the segmentation network with one
    output channel per modality, so everything but ``final_conv`` carries
    over to fine-tuning. Running it through the ConvLSTM lets the memory
    learn to use a patient's earlier (differently corrupted) studies.

``restore+order`` (adds a temporal objective)
    Two distinct studies of the window are fed, uncorrupted, through the
    encoder and the ConvLSTM as a two-step sequence, in time order or
    reversed with probability 1/2; a small head on the pooled final hidden
    state predicts whether the order was right (binary cross-entropy, weight
    ``order_weight``). For the no-memory ``unet`` the head sees both pooled
    bottlenecks. Lesions grow, respond and appear over time, so the order is
    learnable from the images alone; the head is discarded after pretraining.

Pretraining never reads a label: every study is treated as unlabelled, so
the whole cohort is used (patients of the ``test`` split are left out unless
``data.include_test``). Outputs in the run folder::

    pretrained.pt     network weights under ``net.`` + model config + heads
    config.json       resolved PretrainConfig, data fingerprint, versions
    loss_log.csv      step, loss, restore_loss, order_loss, lr, elapsed_s
    result.json       the PretrainResult (initial and final fixed-sample loss)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as pl
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metstrack import __version__
from metstrack.config import from_dict, save_config, to_dict
from metstrack.core.atomic import atomic_path, write_csv_atomic, write_json_atomic
from metstrack.errors import DatasetError
from metstrack.io.release import read_release
from metstrack.models.registry import build_model
from metstrack.train.cache import StudyCache, data_fingerprint
from metstrack.train.config import DataConfig
from metstrack.train.dataset import PatientSequenceDataset
from metstrack.train.pretrain_config import (
    PRETRAINED_FORMAT,
    WEIGHTS_NAME,
    PretrainConfig,
    PretrainResult,
    check_pretrain_config,
    restoration_model_config,
)
from metstrack.train.sampling import SequenceSampler
from metstrack.train.schedule import lr_factor
from metstrack.train.ssl_corrupt import corrupt
from metstrack.types import Cohort, Patient

log = logging.getLogger(__name__)

_BENIGN_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*The `srun` command is available.*",
    r".*Found .* module\(s\) in eval mode.*",
    r".*isinstance\(treespec, LeafSpec\).*",
)


# -- data ----------------------------------------------------------------------------


@dataclass
class PretrainBatch:
    """A batch of corrupted windows and their originals.

    Attributes:
        corrupted: float32 (B, T, C, X, Y, Z) network input.
        target: float32 (B, T, C, X, Y, Z) original z-scored images.
        valid: bool (B, T); False for padded time steps.
        order_pair: int64 (B, 2) study indices fed to the order head (-1: none).
        order_label: float32 (B,) 1 when the pair is in time order.
    """

    corrupted: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor
    order_pair: torch.Tensor
    order_label: torch.Tensor


class PretrainDataset(Dataset):
    """Corrupted windows of every patient (labels are never read).

    Items are indexed by ``(patient index, sample seed)``; the seed fixes the
    window, the patch location, every corruption and the order pair.
    """

    def __init__(self, patients: Sequence[Patient], cache: StudyCache, cfg: PretrainConfig) -> None:
        data = DataConfig(
            missing_modality=cfg.data.missing_modality,
            max_studies=cfg.data.max_studies,
            window="random",
            lesion_fraction=0.0,
            use_all_labels=False,
        )
        self.inner = PatientSequenceDataset(
            list(patients),
            cache,
            data,
            None,
            train=True,
            patch_size_vox=tuple(cfg.model.roi_size),
        )
        self.corrupt_cfg = cfg.corrupt

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        idx, seed = item
        base = self.inner[(int(idx), int(seed))]
        rng = np.random.default_rng([int(seed), 7])
        target = np.ascontiguousarray(base.image, dtype=np.float32)
        corrupted = np.stack([corrupt(s, rng, self.corrupt_cfg) for s in target])
        t = target.shape[0]
        if t >= 2:
            i, j = sorted(int(v) for v in rng.choice(t, size=2, replace=False))
            right = bool(rng.random() < 0.5)
            pair = (i, j) if right else (j, i)
        else:
            pair, right = (-1, -1), False
        return {"corrupted": corrupted, "target": target, "pair": pair, "right": right}


def collate_pretrain(items: list[dict[str, Any]]) -> PretrainBatch:
    """Stack dataset items, padding shorter windows at the end (``valid`` False there)."""
    T = max(it["target"].shape[0] for it in items)
    B = len(items)
    shape = items[0]["target"].shape[1:]
    corrupted = torch.zeros((B, T, *shape))
    target = torch.zeros((B, T, *shape))
    valid = torch.zeros((B, T), dtype=torch.bool)
    for b, it in enumerate(items):
        n = it["target"].shape[0]
        corrupted[b, :n] = torch.from_numpy(it["corrupted"])
        target[b, :n] = torch.from_numpy(it["target"])
        valid[b, :n] = True
    return PretrainBatch(
        corrupted=corrupted,
        target=target,
        valid=valid,
        order_pair=torch.tensor([it["pair"] for it in items], dtype=torch.long),
        order_label=torch.tensor([float(it["right"]) for it in items]),
    )


# -- the Lightning module ------------------------------------------------------------


class PretrainModule(pl.LightningModule):
    """Restoration network (``self.net``) plus the optional order head.

    Args:
        cfg: The pretraining config as a plain dict (``to_dict(PretrainConfig)``).
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()

        self.save_hyperparameters({"pretrain": cfg})
        self.cfg = from_dict(PretrainConfig, cfg, where="pretrain config")
        self.net_cfg = restoration_model_config(self.cfg.model)
        self.net = build_model(self.net_cfg)
        f4 = self.net_cfg.scaled_features[4]
        self.temporal = hasattr(self.net, "convlstm")
        self.use_order = self.cfg.objective.name == "restore+order"
        n_in = f4 if self.temporal else 2 * f4
        self.order_head = nn.Sequential(nn.Linear(n_in, f4), nn.ReLU(), nn.Linear(f4, 1))
        self.loss_log: list[dict[str, float]] = []
        self._t0 = time.perf_counter()

    def losses(self, batch: PretrainBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, restore, order)`` losses of a batch (order 0 when not used)."""
        out = self.net(batch.corrupted)
        v = batch.valid
        restore = nn.functional.mse_loss(out[v], batch.target[v])
        order = torch.zeros((), device=restore.device)
        if self.use_order:
            order = self.order_loss(batch)
        total = restore + self.cfg.objective.order_weight * order
        return total, restore, order

    def order_logits(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logit that ``first`` precedes ``second``; inputs (N, C, X, Y, Z) uncorrupted studies."""
        e1, _ = self.net.encode(first)
        e2, _ = self.net.encode(second)
        if self.temporal:
            state = self.net.convlstm(e1, None)
            h, _ = self.net.convlstm(e2, state)
            feat = h.mean(dim=(2, 3, 4))
        else:
            feat = torch.cat([e1.mean(dim=(2, 3, 4)), e2.mean(dim=(2, 3, 4))], dim=1)
        return self.order_head(feat)[:, 0]

    def order_loss(self, batch: PretrainBatch) -> torch.Tensor:
        """Binary cross-entropy of the order head over the items that hold a pair."""
        keep = batch.order_pair[:, 0] >= 0
        if not bool(keep.any()):
            return torch.zeros((), device=batch.target.device)
        idx = torch.nonzero(keep)[:, 0]
        a = batch.target[idx, batch.order_pair[idx, 0]]
        b = batch.target[idx, batch.order_pair[idx, 1]]
        logits = self.order_logits(a, b)
        return nn.functional.binary_cross_entropy_with_logits(logits, batch.order_label[idx])

    def training_step(self, batch: PretrainBatch, batch_idx: int) -> torch.Tensor:
        total, restore, order = self.losses(batch)
        bsz = int(batch.target.shape[0])
        self.log("pretrain/loss", total, prog_bar=True, batch_size=bsz)
        self.log("pretrain/restore_loss", restore, batch_size=bsz)
        if self.use_order:
            self.log("pretrain/order_loss", order, batch_size=bsz)
        opt = self.optimizers()
        lr = float(opt.param_groups[0]["lr"]) if not isinstance(opt, list) else math.nan
        self.loss_log.append(
            {
                "step": float(self.global_step + 1),
                "loss": float(total.detach()),
                "restore_loss": float(restore.detach()),
                "order_loss": float(order.detach()) if self.use_order else math.nan,
                "lr": lr,
                "elapsed_s": time.perf_counter() - self._t0,
            }
        )
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        opt = torch.optim.AdamW(
            self.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
        )
        total = self.cfg.trainer.max_steps if self.cfg.trainer.max_steps > 0 else 10**9
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total_steps=total, cfg=o)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# -- the run -------------------------------------------------------------------------


def pretrain_patients(cohort: Cohort, *, include_test: bool) -> list[Patient]:
    """Every patient used for pretraining, each study marked unlabelled (no label is read)."""
    out = []
    for p in cohort.patients:
        if not p.studies or (p.split == "test" and not include_test):
            continue
        studies = tuple(dataclasses.replace(s, labelled=False) for s in p.studies)
        out.append(dataclasses.replace(p, studies=studies))
    return out


@torch.no_grad()
def _fixed_loss(module: PretrainModule, batches: list[PretrainBatch]) -> float:
    was_training = module.training
    module.eval()
    vals = [float(module.losses(b)[0]) for b in batches]
    module.train(was_training)
    return float(np.mean(vals)) if vals else math.nan


def save_pretrained(module: PretrainModule, path: str | Path, **extra: Any) -> Path:
    """Write the network weights (``net.`` keys), model config and heads atomically."""
    payload = {
        "state_dict": {f"net.{k}": v.detach().cpu() for k, v in module.net.state_dict().items()},
        "heads": {
            f"order_head.{k}": v.detach().cpu() for k, v in module.order_head.state_dict().items()
        },
        "hyper_parameters": {
            "model": to_dict(module.net_cfg),
            "segmentation_model": to_dict(module.cfg.model),
            "pretrain": to_dict(module.cfg),
            **extra,
        },
        "format": PRETRAINED_FORMAT,
        "metstrack_version": __version__,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def pretrain(
    cfg: PretrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    cohort: Cohort | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> PretrainResult:
    """Pretrain the encoder, ConvLSTM and decoder on every (non-test) study of a cohort.

    Args:
        cfg: Every setting (see :class:`PretrainConfig`).
        data_dir: Dataset in the release layout, studies co-registered through time.
        out_dir: Run folder (created).
        cohort: An already-read cohort (skips reading ``data_dir``).
        callbacks: Extra Lightning callbacks (e.g. a CPU-time budget).

    Returns:
        A :class:`PretrainResult`; ``result.weights`` feeds
        ``trainer.init_weights`` / ``metstrack train --init-weights``.

    Raises:
        ConfigError: Inconsistent settings.
        DatasetError: No patient to pretrain on; unreadable studies.
    """
    start = time.perf_counter()
    check_pretrain_config(cfg)
    data_dir = Path(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cohort is None:
        cohort = read_release(data_dir)
    patients = pretrain_patients(cohort, include_test=cfg.data.include_test)
    if not patients:
        raise DatasetError(f"{data_dir}: no patient with studies to pretrain on")
    t = cfg.trainer
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "cache"
    cache = StudyCache(
        cache_dir, tuple(cfg.model.modalities), missing_modality=cfg.data.missing_modality
    )
    n_studies = sum(len(p.studies) for p in patients)
    log.info("pretraining on %d studies of %d patients", n_studies, len(patients))
    for p in patients:  # fill the cache and fail early on bad data
        cache.check_patient_grid(p, [cache.load(s) for s in p.studies])
    dataset = PretrainDataset(patients, cache, cfg)
    module = PretrainModule(to_dict(cfg))
    rng = np.random.default_rng([t.seed, 99])
    n_eval = min(cfg.data.eval_samples, len(dataset))
    eval_batches = [
        collate_pretrain([dataset[(i, int(rng.integers(2**31 - 1)))]]) for i in range(n_eval)
    ]
    initial = _fixed_loss(module, eval_batches)
    fingerprint = data_fingerprint(patients)
    save_config(
        cfg,
        out / "config.json",
        data_fingerprint=fingerprint,
        data_dir=str(data_dir.resolve()),
        torch_version=torch.__version__,
        lightning_version=pl.__version__,
    )
    from lightning.pytorch.loggers import CSVLogger

    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        max_time=dt.timedelta(minutes=t.time_budget_min) if t.time_budget_min > 0 else None,
        gradient_clip_val=cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else None,
        logger=CSVLogger(save_dir=str(out), name="", version="logs"),
        log_every_n_steps=max(1, t.log_every_n_steps),
        enable_checkpointing=False,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(out),
        deterministic=False,
        callbacks=list(callbacks),
    )
    # each process (DDP) draws its own share of the windows
    loader = DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        sampler=SequenceSampler(
            len(dataset),
            num_samples=cfg.data.samples_per_epoch,
            seed=t.seed,
            shuffle=True,
            rank=int(trainer.global_rank),
            world_size=int(trainer.world_size),
        ),
        num_workers=cfg.data.num_workers,
        collate_fn=collate_pretrain,
    )
    with warnings.catch_warnings():
        for pattern in _BENIGN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, train_dataloaders=loader)
    final = _fixed_loss(module, eval_batches)
    weights = out / WEIGHTS_NAME
    if trainer.is_global_zero:
        save_pretrained(
            module, weights, data_fingerprint=fingerprint, steps=int(trainer.global_step)
        )
        write_csv_atomic(out / "loss_log.csv", pd.DataFrame(module.loss_log))
    result = PretrainResult(
        run_dir=out,
        weights=weights,
        steps=int(trainer.global_step),
        initial_loss=initial,
        final_loss=final,
        elapsed_s=time.perf_counter() - start,
        n_patients=len(patients),
        n_studies=n_studies,
    )
    if trainer.is_global_zero:
        write_json_atomic(
            out / "result.json", {**to_dict(result), "metstrack_version": __version__}
        )
    log.info(
        "pretrained %d steps in %.0f s; fixed-sample loss %.4f -> %.4f; weights %s",
        result.steps,
        result.elapsed_s,
        initial,
        final,
        weights,
    )
    return result
