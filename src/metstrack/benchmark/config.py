"""Typed benchmark configuration (:class:`BenchmarkConfig`), loaded from one TOML file.

Sections (each a frozen dataclass; unknown keys are a ConfigError with a
did-you-mean hint):

* ``[cohort]``      the seeded synthetic cohort (:class:`metstrack.synth.config.SynthConfig`);
  its split table decides train, validation and test patients
* ``[train]``       the training settings shared by every model
  (:class:`metstrack.train.config.TrainConfig`, with ``[train.model]``,
  ``[train.data]``...); each entry below replaces only the network name,
  the prior-mask switch and (optionally) the width
* ``[budget]``      the equal budget: optimiser steps and/or wall-clock minutes
  per model, training seeds, torch threads, one subprocess per model
* ``regimes``       label regimes trained (``all``: every study's label;
  ``radiosurgery``: only the studies the release labels, as in the real data)
* ``[froc]``        the common FP/scan target and the FROC comparison
  (:mod:`metstrack.benchmark.froc_report`)
* ``[predict]``     sliding-window inference on the test patients
* ``[evaluation]``  :class:`metstrack.workflows.evaluate.EvaluationConfig`
* ``[tracking]``    :class:`metstrack.tracking.config.TrackConfig`
* ``[[models]]``    one table per leaderboard row (:class:`ModelEntry`)

Load with :func:`load_benchmark_config`; the resolved config is saved as
``config.json`` in the benchmark's output folder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from metstrack.config import load_config
from metstrack.errors import ConfigError, did_you_mean
from metstrack.infer.sliding import MEMORY_FORMATS, PRECISIONS
from metstrack.metrics.froc import DEFAULT_MIN_IOU, DEFAULT_THRESHOLDS
from metstrack.models.registry import MODELS
from metstrack.synth.config import SynthConfig
from metstrack.tracking.config import TrackConfig
from metstrack.train.config import TrainConfig, check_train_config
from metstrack.workflows.evaluate import EvaluationConfig

#: Leaderboard row names: letters, digits, ``_`` and ``-`` (they name folders).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ModelEntry:
    """One leaderboard row: a network trained and evaluated under the common budget.

    Attributes:
        name: Row name (also the folder ``<out>/models/<name>``), e.g. ``"stt_prior"``.
        network: Registry name of the network (``"stt"``, ``"unet"``, ``"dynunet"``,
            ``"segresnet"``, ``"unetr"``, ``"swinunetr"``).
        prior_mask: Feed the previous study's mask as an extra input channel
            (training: the previous reference; inference: the previous prediction).
        width: Width multiplier of this network; 0 keeps ``train.model.width``.
    """

    name: str
    network: str
    prior_mask: bool = False
    width: float = 0.0


@dataclass(frozen=True)
class BudgetConfig:
    """The compute budget every model gets (identical for all rows).

    Attributes:
        train_minutes: Wall-clock training minutes per model, validation
            included (0: no time limit; then ``max_steps`` must be set).
        max_steps: Optimizer steps per model (-1: no step limit). With both set,
            the first limit reached ends the run.
        threads: torch CPU threads per model (0: torch's default).
        isolate: Run each model (training and inference) in its own spawned
            subprocess, so one model's memory never inflates another's peak.
        seeds: Training seeds; every arm trains once per seed (empty: the
            ``[train.trainer]`` seed only).
    """

    train_minutes: float = 5.0
    max_steps: int = -1
    threads: int = 0
    isolate: bool = True
    seeds: tuple[int, ...] = ()


#: Label regimes: ``all`` trains on every study's label; ``radiosurgery`` only on
#: the labels the release flags (radiosurgery planning studies), as in NYUMets.
REGIMES = ("all", "radiosurgery")


@dataclass(frozen=True)
class FrocSettings:
    """The common operating point and the comparison between arms.

    Attributes:
        enabled: Predict the validation patients too and compare the arms by FROC.
        fp_per_scan_target: The common false-positive rate at which every run's
            threshold is picked on its validation patients.
        thresholds: Increasing probability thresholds of the FROC grid, in (0, 1].
        reference: Arm every other arm is compared with (paired bootstrap); no
            comparison when it is not among the arms.
        n_bootstrap: Bootstrap replicates of each paired difference.
        seed: Seed of the bootstrap.
        min_iou: IoU (component vs lesion) from which an overlapping component
            detects a lesion (:func:`metstrack.metrics.froc.scan_froc`); 0 = any overlap.
        other_targets: Further FP/scan targets at which the same comparison is
            repeated (``froc_targets.csv`` and a section of ``froc.md``): where the
            arms differ can depend on the operating point.
    """

    enabled: bool = True
    fp_per_scan_target: float = 1.0
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    reference: str = "unet"
    n_bootstrap: int = 2000
    seed: int = 0
    min_iou: float = DEFAULT_MIN_IOU
    other_targets: tuple[float, ...] = ()


@dataclass(frozen=True)
class PredictSettings:
    """Sliding-window inference on the test patients.

    Attributes:
        overlap: Window overlap fraction in [0, 1).
        threshold: Foreground probability at or above which a voxel is lesion.
        sw_batch_size: Windows per network call (2: oneDNN convolutions for small networks; docs/speed.md).
        tta_flips: Average over the 8 mirror flips.
        precision: Network arithmetic (``fp32``, ``bf16`` or ``auto``). The benchmark
            compares networks, so it defaults to the reference path (``fp32`` and the
            ``ncdhw`` memory format), the same on every CPU, not to ``metstrack
            predict``'s fastest path.
        memory_format: The network's memory format (``ncdhw``, ``channels-last`` or ``auto``).
    """

    overlap: float = 0.25
    threshold: float = 0.5
    sw_batch_size: int = 2
    tta_flips: bool = False
    precision: str = "fp32"
    memory_format: str = "ncdhw"


def _default_models() -> tuple[ModelEntry, ...]:
    return (
        ModelEntry(name="stt", network="stt"),
        ModelEntry(name="unet", network="unet"),
        ModelEntry(name="stt_prior", network="stt", prior_mask=True),
        ModelEntry(name="dynunet", network="dynunet"),
        ModelEntry(name="stt_ms", network="stt-ms"),
    )


@dataclass(frozen=True)
class BenchmarkConfig:
    """Every setting of one benchmark run (see the module docstring for the sections)."""

    cohort: SynthConfig = field(default_factory=SynthConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    predict: PredictSettings = field(default_factory=PredictSettings)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackConfig = field(default_factory=TrackConfig)
    models: tuple[ModelEntry, ...] = field(default_factory=_default_models)
    regimes: tuple[str, ...] = ("all",)
    froc: FrocSettings = field(default_factory=FrocSettings)


def load_benchmark_config(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> BenchmarkConfig:
    """Load and check a benchmark config: defaults, then a TOML file, then overrides.

    Args:
        path: TOML file or ``None`` for the defaults.
        overrides: Dotted ``section.key=value`` strings, e.g. ``"budget.train_minutes=2"``.

    Raises:
        ConfigError: Unknown key or section (with a suggestion), unknown network
            name (with a suggestion), or inconsistent settings.
    """
    cfg = load_config(BenchmarkConfig, path, overrides)
    check_benchmark_config(cfg, where=str(path) if path is not None else "config")
    return cfg


def check_benchmark_config(cfg: BenchmarkConfig, *, where: str = "config") -> None:
    """Raise ConfigError when the settings cannot run.

    Checks the model entries (known networks, unique folder-safe names), the
    budget (an end to every run), the inference settings, that the cohort has
    test and validation patients, and that it is generated without motion
    (the benchmark trains on the raw synthetic studies; see ``docs/benchmark.md``).
    """
    if not cfg.models:
        raise ConfigError(f"{where}: no [[models]] entry; add at least one network to compare")
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if not _NAME.match(m.name):
            raise ConfigError(
                f"{where}: models[{i}].name {m.name!r} must hold only letters, digits, '_' "
                "and '-' (it names a folder)"
            )
        if m.name in seen:
            raise ConfigError(f"{where}: models[{i}].name {m.name!r} is used twice")
        seen.add(m.name)
        if m.network not in MODELS:
            raise ConfigError(
                f"{where}: models[{i}] ({m.name}): unknown network {m.network!r}; "
                + did_you_mean(m.network, MODELS)
            )
        if m.width < 0:
            raise ConfigError(f"{where}: models[{i}].width = {m.width} must be >= 0")
    b = cfg.budget
    if b.train_minutes < 0:
        raise ConfigError(f"{where}: budget.train_minutes = {b.train_minutes} must be >= 0")
    if b.train_minutes == 0 and b.max_steps <= 0:
        raise ConfigError(
            f"{where}: the budget has no end; set budget.train_minutes or budget.max_steps"
        )
    if b.threads < 0:
        raise ConfigError(f"{where}: budget.threads = {b.threads} must be >= 0")
    if any(int(x) < 0 for x in b.seeds) or len(set(b.seeds)) != len(b.seeds):
        raise ConfigError(f"{where}: budget.seeds {list(b.seeds)} must be distinct and >= 0")
    if not cfg.regimes or len(set(cfg.regimes)) != len(cfg.regimes):
        raise ConfigError(f"{where}: regimes {list(cfg.regimes)} must name each regime once")
    for r in cfg.regimes:
        if r not in REGIMES:
            raise ConfigError(f"{where}: unknown regime {r!r}; {did_you_mean(r, REGIMES)}")
    f = cfg.froc
    th = list(f.thresholds)
    if (
        not th
        or any(not 0 < t <= 1 for t in th)
        or any(b2 <= a for a, b2 in zip(th, th[1:], strict=False))
    ):
        raise ConfigError(f"{where}: froc.thresholds {th} must increase within (0, 1]")
    if f.fp_per_scan_target < 0 or f.n_bootstrap < 1:
        raise ConfigError(
            f"{where}: froc.fp_per_scan_target must be >= 0 and froc.n_bootstrap >= 1"
        )
    if not 0.0 <= f.min_iou <= 1.0:
        raise ConfigError(f"{where}: froc.min_iou = {f.min_iou} must lie in [0, 1]")
    others = list(f.other_targets)
    if any(not math.isfinite(t) or t < 0 for t in others) or len(set(others)) != len(others):
        raise ConfigError(
            f"{where}: froc.other_targets {others} must be distinct FP/scan rates >= 0"
        )
    p = cfg.predict
    if not 0.0 <= p.overlap < 1.0:
        raise ConfigError(f"{where}: predict.overlap = {p.overlap} must lie in [0, 1)")
    if not 0.0 < p.threshold <= 1.0:
        raise ConfigError(f"{where}: predict.threshold = {p.threshold} must lie in (0, 1]")
    if p.sw_batch_size < 1:
        raise ConfigError(f"{where}: predict.sw_batch_size must be at least 1")
    for value, choices, key in (
        (p.precision, PRECISIONS, "precision"),
        (p.memory_format, MEMORY_FORMATS, "memory_format"),
    ):
        if value not in choices:
            raise ConfigError(f"{where}: predict.{key} {value!r}; {did_you_mean(value, choices)}")
    bins = tuple(cfg.evaluation.volume_bins_mm3)
    if len(bins) < 3 or bins[0] != 0 or bins[1] != 10:
        raise ConfigError(
            f"{where}: evaluation.volume_bins_mm3 {list(bins)} must start with 0, 10 so that the "
            "< 10 mm3 stratum is the first leaderboard column"
        )
    c = cfg.cohort
    if c.motion_max_deg > 0 or c.motion_max_mm > 0 or c.acquisition != "fixed":
        raise ConfigError(
            f"{where}: the benchmark cohort must be generated co-registered (without motion, "
            "every study on the baseline grid); set cohort.motion_max_deg = 0, "
            'cohort.motion_max_mm = 0 and cohort.acquisition = "fixed" (see docs/benchmark.md)'
        )
    _, val_frac, test_frac = c.split_fractions
    if test_frac <= 0 or val_frac <= 0:
        raise ConfigError(
            f"{where}: cohort.split_fractions {list(c.split_fractions)} must give validation "
            "and test patients (second and third values > 0)"
        )
    for m in cfg.models:
        check_train_config(model_train_config(cfg, m), where=f"{where} ({m.name})")


def run_seeds(cfg: BenchmarkConfig) -> tuple[int, ...]:
    """The training seeds of every arm: ``budget.seeds``, else the trainer's seed."""
    return tuple(cfg.budget.seeds) or (cfg.train.trainer.seed,)


def model_train_config(
    cfg: BenchmarkConfig, entry: ModelEntry, *, seed: int | None = None, regime: str = "all"
) -> TrainConfig:
    """The training config of one run: the shared ``[train]`` with the entry and budget applied.

    Every run gets the same threads, wall-clock budget and step limit; only the
    network name, prior-mask switch, (optionally) width, the seed and the label
    regime differ. ``regime="radiosurgery"`` trains only on the labels the
    release flags; ``"all"`` on every label present.
    """
    t = cfg.train
    t = replace(t, data=replace(t.data, use_all_labels=regime == "all"))
    model = replace(
        t.model,
        name=entry.network,
        prior_mask=entry.prior_mask,
        width=entry.width if entry.width > 0 else t.model.width,
    )
    b = cfg.budget
    trainer = replace(
        t.trainer,
        time_budget_min=b.train_minutes,
        max_steps=b.max_steps,
        seed=t.trainer.seed if seed is None else int(seed),
        max_epochs=-1 if b.train_minutes > 0 or b.max_steps > 0 else t.trainer.max_epochs,
        threads=b.threads,
        progress_bar=False,
        devices=1,
        num_nodes=1,
        accelerator="cpu",
    )
    return replace(t, model=model, trainer=trainer)


def select_models(cfg: BenchmarkConfig, names: Sequence[str]) -> tuple[ModelEntry, ...]:
    """The entries named in ``names`` (all when empty), in the config's order.

    Raises:
        ConfigError: A name that is not an entry (with a suggestion).
    """
    if not names:
        return cfg.models
    known = {m.name: m for m in cfg.models}
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown model {n!r} in --models; {did_you_mean(n, known)}")
    wanted = set(names)
    return tuple(m for m in cfg.models if m.name in wanted)
