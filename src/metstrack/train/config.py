"""Typed training configuration: one TOML file holds every setting of a run.

Sections (each a frozen dataclass; unknown keys are a ConfigError with a
did-you-mean hint):

* ``[model]``      the network (:class:`metstrack.models.config.ModelConfig`)
* ``[data]``       modalities, sequence windows, patches, cache, loaders
* ``[augment]``    the spatial and intensity augmentation shared by a sequence
* ``[loss]``       the MONAI loss and its options
* ``[optim]``      AdamW, warm-up and decay, gradient clipping
* ``[validation]`` whole-patient validation and the checkpoint score
* ``[trainer]``    steps, epochs, time budget, devices, precision, seed

Load it with ``load_train_config(path, overrides)``; the resolved config is
saved as ``config.json`` in the run folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from metstrack.config import load_config
from metstrack.errors import ConfigError, did_you_mean
from metstrack.models.config import ModelConfig
from metstrack.types import MODALITIES

#: Loss names accepted by ``[loss] name`` (MONAI implementations).
LossName = Literal["dice", "dicece", "dicefocal", "generalized_dice", "tversky"]
#: Validation scores a checkpoint can be chosen on (``[validation] score``).
ScoreName = Literal["lesion_f1", "dice", "small_sensitivity"]
#: What a study without one of the configured modalities does (``[data] missing_modality``).
MissingModality = Literal["error", "zero"]
#: Which consecutive studies a training sequence holds (``[data] window``).
Window = Literal["random", "first"]
#: Learning-rate decay after warm-up (``[optim] schedule``).
Schedule = Literal["cosine", "poly", "constant"]
#: Lightning's training arithmetic (``[trainer] precision``).
TrainPrecision = Literal["32-true", "16-mixed", "bf16-mixed"]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)
SCORE_NAMES: tuple[str, ...] = get_args(ScoreName)


@dataclass(frozen=True)
class DataConfig:
    """How patient sequences are built from a cohort.

    Attributes:
        missing_modality: ``"error"`` raises a DatasetError naming the study;
            ``"zero"`` fills the channel with zeros (logged, never silent).
        max_studies: Longest training sequence; longer patients give a window.
        window: ``"random"`` (a random run of consecutive studies, preferring
            windows holding a labelled study) or ``"first"``.
        lesion_fraction: Share of training patches centred on a lesion (each
            lesion equally likely whatever its size, so small lesions are seen).
        use_all_labels: Use every label present on disk, ignoring the
            release's ``labelled`` flag (a training-time option).
        cache_dir: Folder of the preprocessed-array cache; empty means
            ``<out>/cache``.
        cache_float16: Store cached images as float16 (half the disk).
        crop_foreground: Crop each patient to the bounding box of its
            non-zero voxels (union over studies) before padding.
        pad_multiple: Whole volumes are padded to a multiple of this.
        samples_per_epoch: Training sequences per epoch; 0 means one per
            training patient.
        val_fraction: Share of patients held out for validation when the
            cohort has no split table (deterministic from the seed).
        max_val_patients: Validate on at most this many patients (0: all).
        num_workers: DataLoader worker processes.
        batch_size: Patients per step (sequences are padded in time).
        prior_mask_dropout: Probability that the previous study's reference
            mask is blanked when the model runs in prior-mask mode.
    """

    missing_modality: MissingModality = "error"
    max_studies: int = 8
    window: Window = "random"
    lesion_fraction: float = 0.5
    use_all_labels: bool = False
    cache_dir: str = ""
    cache_float16: bool = False
    crop_foreground: bool = True
    pad_multiple: int = 16
    samples_per_epoch: int = 0
    val_fraction: float = 0.2
    max_val_patients: int = 0
    num_workers: int = 0
    batch_size: int = 1
    prior_mask_dropout: float = 0.3


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation sampled once per sequence and applied to every study.

    Attributes:
        enabled: Switch all augmentation off.
        flip_prob: Probability of a flip, per axis.
        affine_prob: Probability of a rotation plus scaling.
        rotate_max_deg: Largest rotation about each axis, degrees.
        scale_max: Largest relative scaling (0.1 means 0.9..1.1).
        intensity_prob: Probability of each intensity jitter (scale, shift).
        intensity_scale: Largest relative intensity scaling per modality.
        intensity_shift: Largest intensity shift per modality (z-score units).
    """

    enabled: bool = True
    flip_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_max_deg: float = 10.0
    scale_max: float = 0.1
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1


@dataclass(frozen=True)
class LossConfig:
    """The segmentation loss (MONAI).

    Attributes:
        name: One of :data:`LOSS_NAMES`.
        include_background: Count the background class in Dice terms.
        focal_gamma: Focusing parameter of ``dicefocal``.
        tversky_alpha: False-positive weight of ``tversky``.
        tversky_beta: False-negative weight of ``tversky`` (> alpha favours recall).
        lambda_dice: Weight of the Dice term in compound losses.
        lambda_other: Weight of the CE or focal term in compound losses.
    """

    name: LossName = "dicece"
    include_background: bool = False
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    lambda_dice: float = 1.0
    lambda_other: float = 1.0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warm-up and decay (stepped every optimizer step).

    Attributes:
        lr: Peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        schedule: ``"cosine"``, ``"poly"`` or ``"constant"`` after warm-up.
        warmup_steps: Linear warm-up from ``lr * 0.01`` to ``lr``.
        poly_power: Exponent of the polynomial decay.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        grad_clip_norm: Clip the gradient norm to this (0 disables).
        accumulate_grad_batches: Sequences per optimizer step.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Schedule = "cosine"
    warmup_steps: int = 50
    poly_power: float = 0.9
    min_lr_ratio: float = 0.01
    grad_clip_norm: float = 1.0
    accumulate_grad_batches: int = 1


@dataclass(frozen=True)
class ValidationConfig:
    """Whole-patient validation with the memory carried through each sequence.

    Attributes:
        enabled: Validate at all (without it the last checkpoint is the best).
        every_n_epochs: Validate every this many epochs.
        val_check_interval_steps: Validate every this many training steps
            instead (0: by epochs).
        overlap: Sliding-window overlap of the whole-volume prediction.
        threshold: Probability threshold of the lesion class.
        score: Metric the best checkpoint is chosen on (:data:`SCORE_NAMES`);
            ties are broken by Dice (score + 1e-3 * Dice).
        min_lesion_volume_mm3: Predicted components smaller than this are dropped
            before scoring (0 keeps all).
    """

    enabled: bool = True
    every_n_epochs: int = 1
    val_check_interval_steps: int = 0
    overlap: float = 0.25
    threshold: float = 0.5
    score: ScoreName = "lesion_f1"
    min_lesion_volume_mm3: float = 0.0


@dataclass(frozen=True)
class TrainerConfig:
    """Run length, hardware and reproducibility.

    Attributes:
        max_epochs: Stop after this many epochs (-1: no limit).
        max_steps: Stop after this many optimizer steps (-1: no limit).
        time_budget_min: Stop after this many wall-clock minutes (0: no limit);
            the last checkpoint is still written.
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"``.
        devices: Devices per node (DDP when > 1).
        num_nodes: Nodes (DDP).
        strategy: Lightning strategy (``"auto"``, ``"ddp"``, ``"ddp_spawn"``...).
        precision: ``"32-true"``, ``"16-mixed"`` or ``"bf16-mixed"``.
        seed: Seeds Python, NumPy, torch and every sampled augmentation (always).
        deterministic: Also force torch's deterministic kernels (bitwise
            reproducible on GPU; about twice slower for 3D convolutions on CPU).
        early_stopping_patience: Validations without improvement before
            stopping (0 disables).
        log_every_n_steps: CSV logging interval.
        progress_bar: Show Lightning's progress bar.
        threads: torch CPU threads per process (0: torch's default).
        init_weights: Pretrained weights (``metstrack pretrain``) or a checkpoint the
            network starts from; unmatched keys are listed in ``init_weights.json``
            (see :mod:`metstrack.train.ssl_weights`). Empty: random initialisation.
    """

    max_epochs: int = 100
    max_steps: int = -1
    time_budget_min: float = 0.0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: TrainPrecision = "32-true"
    seed: int = 0
    deterministic: bool = False
    early_stopping_patience: int = 0
    log_every_n_steps: int = 10
    progress_bar: bool = True
    threads: int = 0
    init_weights: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run.

    The channel order (``model.modalities``) and the training patch and
    sliding-window size (``model.roi_size``) live in ``[model]`` because the
    checkpoint must carry them for inference.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def load_train_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Load and check a training config: defaults, then a TOML file, then overrides.

    Args:
        path: TOML file or ``None`` for the defaults.
        overrides: Dotted ``section.key=value`` strings, e.g. ``"optim.lr=3e-4"``.
        values: Typed values by dotted key, applied last (``None`` values skipped).

    Raises:
        ConfigError: Unknown key or section (with a suggestion), bad value, or
            inconsistent settings (see :func:`check_train_config`).
    """
    cfg = load_config(TrainConfig, path, overrides, values=values)
    check_train_config(cfg, where=str(path) if path is not None else "config")
    return cfg


def check_train_config(cfg: TrainConfig, *, where: str = "config") -> None:
    """Raise ConfigError when settings cannot work together.

    Checks loss and score names, modality names, the patch size (positive
    multiples of 16), probabilities in [0, 1], positive counts, and that the
    run has an end.
    """
    if cfg.loss.name not in LOSS_NAMES:
        raise ConfigError(
            f"{where}: [loss] name {cfg.loss.name!r} is unknown; "
            + did_you_mean(cfg.loss.name, LOSS_NAMES)
        )
    if cfg.validation.score not in SCORE_NAMES:
        raise ConfigError(
            f"{where}: [validation] score {cfg.validation.score!r} is unknown; "
            + did_you_mean(cfg.validation.score, SCORE_NAMES)
        )
    d = cfg.data
    mods = cfg.model.modalities
    for m in mods:
        if m not in MODALITIES:
            raise ConfigError(
                f"{where}: [model] modality {m!r} is unknown; {did_you_mean(m, MODALITIES)}"
            )
    if len(set(mods)) != len(mods):
        raise ConfigError(f"{where}: [model] modalities {list(mods)} repeat a modality")
    mult = 16
    if d.pad_multiple < 1 or d.pad_multiple % mult:
        raise ConfigError(f"{where}: [data] pad_multiple must be a positive multiple of {mult}")
    for s in cfg.model.roi_size:
        if s <= 0 or s % mult:
            raise ConfigError(
                f"{where}: [model] roi_size {list(cfg.model.roi_size)} (the training patch) must "
                f"hold positive multiples of {mult} (the network halves the size four times), "
                "e.g. [48, 48, 48]"
            )
    for name, p in (
        ("data.lesion_fraction", d.lesion_fraction),
        ("data.val_fraction", d.val_fraction),
        ("data.prior_mask_dropout", d.prior_mask_dropout),
        ("augment.flip_prob", cfg.augment.flip_prob),
        ("augment.affine_prob", cfg.augment.affine_prob),
        ("augment.intensity_prob", cfg.augment.intensity_prob),
    ):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{where}: {name} = {p} must lie in [0, 1]")
    if cfg.augment.rotate_max_deg < 0 or cfg.augment.rotate_max_deg > 45:
        raise ConfigError(f"{where}: augment.rotate_max_deg must lie in [0, 45] (small rotations)")
    if not 0 <= cfg.augment.scale_max < 0.5:
        raise ConfigError(f"{where}: augment.scale_max must lie in [0, 0.5)")
    if not 0 <= cfg.augment.intensity_scale < 0.5:
        raise ConfigError(f"{where}: augment.intensity_scale must lie in [0, 0.5)")
    for name, v in (
        ("data.max_studies", d.max_studies),
        ("data.batch_size", d.batch_size),
        ("trainer.devices", cfg.trainer.devices),
        ("trainer.num_nodes", cfg.trainer.num_nodes),
        ("validation.every_n_epochs", cfg.validation.every_n_epochs),
        ("optim.accumulate_grad_batches", cfg.optim.accumulate_grad_batches),
    ):
        if v < 1:
            raise ConfigError(f"{where}: {name} = {v} must be at least 1")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{where}: optim.lr = {cfg.optim.lr} must be positive")
    if not 0.0 <= cfg.validation.overlap < 1.0:
        raise ConfigError(f"{where}: validation.overlap must lie in [0, 1)")
    t = cfg.trainer
    if t.max_steps < 0 and t.max_epochs < 0 and t.time_budget_min <= 0:
        raise ConfigError(
            f"{where}: the run has no end; set trainer.max_steps, trainer.max_epochs "
            "or trainer.time_budget_min"
        )
