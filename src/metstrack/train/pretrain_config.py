"""Settings and results of self-supervised pretraining (``metstrack pretrain``).

:class:`PretrainConfig` is loaded from TOML (:func:`load_pretrain_config`) and
checked (:func:`check_pretrain_config`); the restoration network's configuration
comes from the downstream model's (:func:`restoration_model_config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from metstrack.config import load_config
from metstrack.errors import ConfigError, did_you_mean
from metstrack.models.config import ModelConfig
from metstrack.train.config import MissingModality, OptimConfig, TrainPrecision
from metstrack.train.ssl_corrupt import CorruptionConfig

#: Networks whose encoder and decoder this pretraining serves (basic-U-Net family).
PRETRAINABLE = ("stt", "unet")
#: Pretraining objectives (``[objective] name``).
PretrainObjective = Literal["restore", "restore+order"]
OBJECTIVES: tuple[str, ...] = get_args(PretrainObjective)
WEIGHTS_NAME = "pretrained.pt"
PRETRAINED_FORMAT = "metstrack-pretrained/1"


@dataclass(frozen=True)
class PretrainDataConfig:
    """Which studies pretrain and how windows are drawn.

    Attributes:
        max_studies: Longest window of consecutive studies per sample.
        include_test: Also use patients of the ``test`` split (off by default so
            a later evaluation never saw its images).
        missing_modality: ``"error"`` or ``"zero"`` (zero-fill, logged).
        cache_dir: Preprocessed-array cache folder; empty means ``<out>/cache``
            (point it at a training run's cache to share it).
        samples_per_epoch: Windows per epoch (0: one per patient).
        num_workers: DataLoader worker processes.
        batch_size: Windows per step.
        eval_samples: Fixed windows (fixed corruptions) scored before and after
            pretraining to report the loss change.
    """

    max_studies: int = 4
    include_test: bool = False
    missing_modality: MissingModality = "error"
    cache_dir: str = ""
    samples_per_epoch: int = 0
    num_workers: int = 0
    batch_size: int = 1
    eval_samples: int = 4


@dataclass(frozen=True)
class ObjectiveConfig:
    """The pretext task.

    Attributes:
        name: ``"restore"`` or ``"restore+order"`` (see the module docstring).
        order_weight: Weight of the order loss against the restoration loss.
    """

    name: PretrainObjective = "restore"
    order_weight: float = 0.1


@dataclass(frozen=True)
class PretrainTrainerConfig:
    """Run length and hardware of pretraining.

    Attributes:
        max_steps: Optimizer steps (-1: until the time budget).
        time_budget_min: Wall-clock limit in minutes (0: none).
        seed: Seeds windows, patches, corruptions and initialisation.
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"``.
        devices: Devices (DDP when > 1).
        precision: Lightning precision.
        threads: torch CPU threads (0: default).
        log_every_n_steps: CSV logging interval of Lightning's logger.
        progress_bar: Show Lightning's progress bar.
    """

    max_steps: int = 500
    time_budget_min: float = 0.0
    seed: int = 0
    accelerator: str = "auto"
    devices: int = 1
    precision: TrainPrecision = "32-true"
    threads: int = 0
    log_every_n_steps: int = 10
    progress_bar: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of one pretraining run (TOML sections of the same names).

    ``[model]`` is the *segmentation* network to be fine-tuned later
    (``name`` ``stt`` or ``unet``, widths, modalities, ``roi_size`` = patch);
    the restoration network built from it outputs one channel per modality.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    corrupt: CorruptionConfig = field(default_factory=CorruptionConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=10))
    trainer: PretrainTrainerConfig = field(default_factory=PretrainTrainerConfig)


@dataclass(frozen=True)
class PretrainResult:
    """Outcome of :func:`pretrain`.

    Attributes:
        run_dir: The run folder.
        weights: The pretrained weights file (``--init-weights`` of training).
        steps: Optimizer steps taken.
        initial_loss: Objective on the fixed evaluation windows before training.
        final_loss: The same after training.
        elapsed_s: Wall-clock seconds, cache filling included.
        n_patients: Patients used.
        n_studies: Studies used.
    """

    run_dir: Path
    weights: Path
    steps: int
    initial_loss: float
    final_loss: float
    elapsed_s: float
    n_patients: int
    n_studies: int


def load_pretrain_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
) -> PretrainConfig:
    """Load and check a pretraining config (defaults, TOML file, ``key=value`` overrides,
    then typed ``values`` by dotted key, ``None`` skipped).

    Raises:
        ConfigError: Unknown key (with a suggestion) or inconsistent settings.
    """
    cfg = load_config(PretrainConfig, path, overrides, values=values)
    check_pretrain_config(cfg, where=str(path) if path else "config")
    return cfg


def check_pretrain_config(cfg: PretrainConfig, *, where: str = "config") -> None:
    """Raise ConfigError when the settings cannot work."""
    if cfg.model.name not in PRETRAINABLE:
        raise ConfigError(
            f"{where}: [model] name {cfg.model.name!r} cannot be pretrained here; the "
            f"restoration pretraining serves the basic-U-Net family {list(PRETRAINABLE)}"
        )
    if cfg.objective.name not in OBJECTIVES:
        raise ConfigError(
            f"{where}: [objective] name {cfg.objective.name!r} is unknown; "
            + did_you_mean(cfg.objective.name, OBJECTIVES)
        )
    for s in cfg.model.roi_size:
        if s <= 0 or s % 16:
            raise ConfigError(
                f"{where}: [model] roi_size {list(cfg.model.roi_size)} (the pretraining patch) "
                "must hold positive multiples of 16, e.g. [48, 48, 48]"
            )
    c = cfg.corrupt
    for name, p in (
        ("corrupt.nonlinear_prob", c.nonlinear_prob),
        ("corrupt.shuffle_prob", c.shuffle_prob),
        ("corrupt.paint_prob", c.paint_prob),
        ("corrupt.inpaint_fraction", c.inpaint_fraction),
    ):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{where}: {name} = {p} must lie in [0, 1]")
    if not 0 < c.shuffle_block_frac <= 0.5 or c.paint_boxes < 1 or c.shuffle_blocks < 0:
        raise ConfigError(
            f"{where}: corrupt.shuffle_block_frac must lie in (0, 0.5], paint_boxes >= 1, "
            "shuffle_blocks >= 0"
        )
    if cfg.objective.order_weight < 0:
        raise ConfigError(f"{where}: objective.order_weight must be >= 0")
    if cfg.data.max_studies < 1 or cfg.data.batch_size < 1:
        raise ConfigError(f"{where}: data.max_studies and data.batch_size must be >= 1")
    if cfg.objective.name == "restore+order" and cfg.data.max_studies < 2:
        raise ConfigError(f"{where}: the order objective needs data.max_studies >= 2")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{where}: optim.lr must be positive")
    if cfg.trainer.max_steps < 0 and cfg.trainer.time_budget_min <= 0:
        raise ConfigError(
            f"{where}: pretraining has no end; set trainer.max_steps or trainer.time_budget_min"
        )


def restoration_model_config(model: ModelConfig) -> ModelConfig:
    """The restoration network of a segmentation config: one output per modality, no prior mask."""
    return dataclasses.replace(model, out_channels=model.in_channels, prior_mask=False)
