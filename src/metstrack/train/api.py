"""``train(cfg, data_dir, out_dir)``: the library entry point of a training run.

The demo, the benchmark, hyperparameter search and ablations call this. A run
folder holds::

    <out>/config.json          resolved config, metstrack version, data fingerprint
    <out>/checkpoints/best.ckpt  best validation score (see metstrack.train.validation)
    <out>/checkpoints/last.ckpt  state at the end (resume from it)
    <out>/logs/metrics.csv     Lightning CSV log (TensorBoard beside it when installed)
    <out>/validation.csv       one row per validation: epoch, step and every score
    <out>/result.json          the TrainResult below

Several GPUs or nodes: ``trainer.devices``, ``trainer.num_nodes`` and
``trainer.strategy = "ddp"`` run Lightning's DDP; each process samples its own
share of the patients (:class:`~metstrack.train.sampling.SequenceSampler`) and
validation counts are summed over processes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import CSVLogger

from metstrack import __version__
from metstrack.config import save_config, to_dict
from metstrack.core.atomic import write_csv_atomic, write_json_atomic
from metstrack.errors import ConfigError
from metstrack.io.release import read_release
from metstrack.train.cache import data_fingerprint
from metstrack.train.config import TrainConfig, check_train_config
from metstrack.train.datamodule import SequenceDataModule
from metstrack.train.module import ScoreHook, SequenceSegmentationModule
from metstrack.train.ssl_weights import init_from_pretrained
from metstrack.train.validation import ValidationScores
from metstrack.types import Cohort

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_CKPT = "best.ckpt"
LAST_CKPT = "last.ckpt"

#: Lightning warnings that are expected in small runs and carry no information here.
_BENIGN_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*The `srun` command is available.*",
    r".*Found .* module\(s\) in eval mode.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    # resuming into a new run folder: only best_model_path carries over (copied below)
    r".*The dirpath has changed from.*",
)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run.

    Attributes:
        run_dir: The run folder.
        best_ckpt: Checkpoint with the best validation score (the last one when
            validation is disabled).
        last_ckpt: Checkpoint at the end of training (resume from it).
        best_score: Best checkpoint score (NaN without validation).
        scores: Validation scores of the best checkpoint (``None`` without a
            validation); ``result.json`` holds their :meth:`ValidationScores.as_dict`.
        history: Scores of every validation, in order (with ``epoch`` and ``step``).
        global_step: Optimizer steps taken (including those before a resume).
        epochs: Epochs completed.
        stopped_by: ``"max_steps"``, ``"max_epochs"``, ``"time_budget"`` or ``"early_stopping"``.
        data_fingerprint: Hash of the cohort's files and flags.
        elapsed_s: Wall-clock seconds of this call.
        rank: Global rank of this process (0 outside DDP); only rank 0 writes
            ``result.json`` and ``validation.csv``.
    """

    run_dir: Path
    best_ckpt: Path
    last_ckpt: Path
    best_score: float
    scores: ValidationScores | None = None
    history: tuple[dict[str, float], ...] = ()
    global_step: int = 0
    epochs: int = 0
    stopped_by: str = "max_steps"
    data_fingerprint: str = ""
    elapsed_s: float = 0.0
    rank: int = 0


def _build_module(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: str | Path | None,
    score_hooks: Sequence[ScoreHook],
) -> SequenceSegmentationModule:
    """The Lightning module, initialised from pretrained weights when asked (not on resume)."""
    module = SequenceSegmentationModule(to_dict(cfg.model), to_dict(cfg))
    module.score_hooks.extend(score_hooks)
    if cfg.trainer.init_weights and resume is None:
        init_from_pretrained(
            module.net,
            cfg.trainer.init_weights,
            modalities=cfg.model.modalities,
            prior_mask=cfg.model.prior_mask,
            out_dir=out,
        )
    return module


def _callbacks(
    cfg: TrainConfig, ckpt_dir: Path, extra: Sequence[Callback]
) -> tuple[ModelCheckpoint, list[Callback]]:
    """The best-checkpoint callback, and every callback of the run (early stopping, LR)."""
    validate = cfg.validation.enabled
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/score" if validate else None,
        mode="max",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    cbs: list[Callback] = [best_cb, *extra]
    if validate and cfg.trainer.early_stopping_patience > 0:
        cbs.append(
            EarlyStopping(
                monitor="val/score",
                mode="max",
                patience=cfg.trainer.early_stopping_patience,
                check_on_train_epoch_end=False,
            )
        )
    cbs.append(LearningRateMonitor(logging_interval="step"))
    return best_cb, cbs


def _loggers(out: Path) -> list[Any]:
    """CSV metrics under ``logs/``, plus TensorBoard when it is installed."""
    loggers: list[Any] = [CSVLogger(save_dir=str(out), name="", version="logs")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out), name="", version="tensorboard"))
    except ImportError:
        pass
    return loggers


def _build_trainer(
    cfg: TrainConfig,
    out: Path,
    n_train_patients: int,
    callbacks: list[Callback],
    loggers: list[Any],
) -> pl.Trainer:
    """The Lightning trainer: budget, precision, validation schedule, distribution."""
    t = cfg.trainer
    steps_per_epoch = max(
        1,
        math.ceil(
            (cfg.data.samples_per_epoch or n_train_patients)
            / (t.devices * t.num_nodes * cfg.data.batch_size)
        ),
    )
    val_kwargs: dict[str, Any] = {}
    if not cfg.validation.enabled:
        val_kwargs["limit_val_batches"] = 0
    elif cfg.validation.val_check_interval_steps > 0:
        val_kwargs["val_check_interval"] = cfg.validation.val_check_interval_steps
        val_kwargs["check_val_every_n_epoch"] = None
    else:
        val_kwargs["check_val_every_n_epoch"] = cfg.validation.every_n_epochs
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=dt.timedelta(minutes=t.time_budget_min) if t.time_budget_min > 0 else None,
        gradient_clip_val=cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else None,
        gradient_clip_algorithm="norm",
        accumulate_grad_batches=cfg.optim.accumulate_grad_batches,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=max(1, min(t.log_every_n_steps, steps_per_epoch)),
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(out),
        **val_kwargs,
    )


def _fit(
    trainer: pl.Trainer,
    module: SequenceSegmentationModule,
    datamodule: SequenceDataModule,
    *,
    resume: str | Path | None,
    ckpt_dir: Path,
    best_cb: ModelCheckpoint,
    validate: bool,
) -> Path:
    """Train; save ``last.ckpt`` (and a validated ``best.ckpt`` if none was kept); return last."""
    with warnings.catch_warnings():
        for pattern in _BENIGN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        last = ckpt_dir / LAST_CKPT
        trainer.save_checkpoint(last, weights_only=False)
        if validate and not best_cb.best_model_path:
            # the budget ended before any validation: validate the final weights once
            trainer.validate(module, datamodule=datamodule, verbose=False)
            trainer.save_checkpoint(ckpt_dir / BEST_CKPT, weights_only=False)
    return last


def _best_checkpoint(
    trainer: pl.Trainer, best_cb: ModelCheckpoint, ckpt_dir: Path, *, validate: bool
) -> Path:
    """``best.ckpt`` of this run folder (copied in when a resumed run did not beat it)."""
    best = Path(best_cb.best_model_path) if best_cb.best_model_path else ckpt_dir / BEST_CKPT
    if best.resolve().parent == ckpt_dir.resolve():
        best = ckpt_dir / best.name  # same spelling as last_ckpt (relative stays relative)
    elif best.is_file():
        # resumed from another run whose best was not beaten: keep the folder self-contained
        if trainer.is_global_zero:
            shutil.copy2(best, ckpt_dir / BEST_CKPT)
        best = ckpt_dir / BEST_CKPT
    if not validate:
        trainer.save_checkpoint(best, weights_only=False)
    return best


def check_accelerator(cfg: TrainConfig) -> None:
    """Refuse, in one line and before any work, a GPU accelerator on a machine without one.

    Raises:
        ConfigError: ``trainer.accelerator = "gpu"`` and PyTorch sees no CUDA device
            (a CPU build of torch, or no GPU), or fewer GPUs than ``trainer.devices``.
    """
    t = cfg.trainer
    if t.accelerator != "gpu":
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found == 0:
        build = "a CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ConfigError(
            f"trainer.accelerator = 'gpu', but PyTorch ({torch.__version__}, {build}) sees no "
            "CUDA GPU on this machine; train on a GPU machine, or pass --accelerator cpu "
            "(or auto)"
        )
    if isinstance(t.devices, int) and t.devices > found:
        raise ConfigError(
            f"trainer.devices = {t.devices}, but PyTorch sees {found} CUDA GPU(s) on this machine"
        )


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    cohort: Cohort | None = None,
    score_hooks: Sequence[ScoreHook] = (),
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a network on a cohort's patient sequences.

    Named steps: :func:`_build_module`, :func:`_callbacks`, :func:`_loggers`,
    :func:`_build_trainer`, :func:`_fit`, :func:`_best_checkpoint`, then the
    result is written (``validation.csv``, ``result.json``).

    Args:
        cfg: Every setting (see :mod:`metstrack.train.config`).
        data_dir: Dataset in the release layout, studies co-registered through
            time (synthetic cohorts without motion, or ``metstrack preprocess``
            output).
        out_dir: Run folder (created).
        resume: A ``last.ckpt`` (or any checkpoint of this module) to continue
            from: weights, optimizer, schedule, step and epoch counters.
        cohort: An already-read cohort (skips reading ``data_dir``).
        score_hooks: Called after every validation as ``fn(epoch, step, scores)``;
            raising from it (e.g. ``optuna.TrialPruned``) stops the run and
            propagates.
        callbacks: Extra Lightning callbacks.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: Inconsistent settings.
        DatasetError, ImageReadError, GeometryMismatchError...: Unusable data
            (found before training starts, while filling the cache).
    """
    start = dt.datetime.now()
    check_train_config(cfg)
    check_accelerator(cfg)
    data_dir = Path(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if resume is not None and not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: checkpoint file not found")
    if cohort is None:
        cohort = read_release(data_dir)
    t = cfg.trainer
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    fingerprint = data_fingerprint(cohort.patients)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "cache"
    datamodule = SequenceDataModule(cfg, cohort, cache_dir)
    module = _build_module(cfg, out, resume=resume, score_hooks=score_hooks)
    ckpt_dir = out / CHECKPOINT_DIR
    validate = cfg.validation.enabled
    best_cb, cbs = _callbacks(cfg, ckpt_dir, callbacks)
    trainer = _build_trainer(cfg, out, len(datamodule.train_patients), cbs, _loggers(out))
    if trainer.is_global_zero:
        save_config(
            cfg,
            out / "config.json",
            data_fingerprint=fingerprint,
            data_dir=str(data_dir.resolve()),
            resumed_from=str(resume) if resume else None,
            torch_version=torch.__version__,
            lightning_version=pl.__version__,
        )
    last = _fit(
        trainer,
        module,
        datamodule,
        resume=resume,
        ckpt_dir=ckpt_dir,
        best_cb=best_cb,
        validate=validate,
    )
    best = _best_checkpoint(trainer, best_cb, ckpt_dir, validate=validate)
    best_score = (
        float(best_cb.best_model_score)
        if best_cb.best_model_score is not None
        else (module.last_scores.score if module.last_scores is not None else math.nan)
    )
    history = tuple(module.history)
    best_scores = _scores_of_best(history, best_score) or module.last_scores
    stopped = _stopped_by(trainer, cfg)
    result = TrainResult(
        run_dir=out,
        best_ckpt=best,
        last_ckpt=last,
        best_score=best_score,
        scores=best_scores,
        history=history,
        global_step=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        stopped_by=stopped,
        data_fingerprint=fingerprint,
        elapsed_s=(dt.datetime.now() - start).total_seconds(),
        rank=int(trainer.global_rank),
    )
    if trainer.is_global_zero:
        if history:
            write_csv_atomic(out / "validation.csv", pd.DataFrame(list(history)))
        write_json_atomic(
            out / "result.json",
            {
                **to_dict(result),
                "scores": result.scores.as_dict() if result.scores is not None else {},
                "metstrack_version": __version__,
            },
        )
    log.info(
        "trained %d steps (%s); best %s = %.4f at %s",
        result.global_step,
        stopped,
        cfg.validation.score,
        best_score,
        best,
    )
    return result


def _scores_of_best(history: tuple[dict[str, float], ...], best: float) -> ValidationScores | None:
    for row in history:
        if math.isclose(row.get("score", math.nan), best, rel_tol=1e-6, abs_tol=1e-9):
            return ValidationScores.from_dict(row)
    return None


def _stopped_by(trainer: pl.Trainer, cfg: TrainConfig) -> str:
    t = cfg.trainer
    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and cb.wait_count >= cb.patience:
            return "early_stopping"
    if t.max_steps > 0 and trainer.global_step >= t.max_steps:
        return "max_steps"
    if t.max_epochs > 0 and trainer.current_epoch >= t.max_epochs:
        return "max_epochs"
    if t.time_budget_min > 0:
        return "time_budget"
    return "max_epochs"
