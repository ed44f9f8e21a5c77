"""Hyperparameter search with Optuna: a database-backed, prunable, resumable study.

One TOML file holds the base training config (the usual ``[model]``,
``[data]``, ... sections) and a ``[search]`` table with the study settings and
the search space, one sub-table per parameter named by its dotted config key::

    [search]
    study_name = "stt"
    pruner = "median"            # median | percentile | none
    n_startup_trials = 2         # trials never pruned (and the pruner's history)

    [search.space."optim.lr"]
    type = "float"               # float | int | categorical
    low = 1e-4
    high = 1e-2
    log = true

    [search.space."loss.name"]
    type = "categorical"
    choices = ["dicece", "dicefocal", "tversky"]

Any field of the training config can be searched (``model.width``,
``data.lesion_fraction``, ``data.max_studies``...), plus the derived
``augment.strength``: a factor applied to every augmentation probability and
magnitude of the base config (0 switches augmentation off, 1 keeps the base,
values are clipped to each setting's allowed range).

Each trial is one :func:`metstrack.train.api.train` run in
``<out>/trials/trial_NNNN``; every validation pass reports its score to
Optuna (step = optimizer step) and the pruner may stop the trial there. The
trial's value is the **best** validation score of the run, not its last.

The study lives in a database: SQLite ``<out>/search.db`` by default, or any
SQLAlchemy URL (``--storage postgresql://...``) so several machines share one
study. A search that was killed continues where it stopped: rerunning the
same command (same study name and storage) counts the finished trials, and a
trial left RUNNING by the dead process is marked failed once its heartbeat is
older than ``grace_period_s`` and re-queued with the same parameters. After
every trial ``best.toml`` (the best trial's resolved training config, which
``metstrack train --config best.toml`` reproduces), ``trials.csv`` and
``search.json`` are rewritten.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from metstrack.config import apply_overrides, from_dict, set_dotted, to_dict
from metstrack.core.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from metstrack.core.extras import require
from metstrack.errors import ConfigError, did_you_mean
from metstrack.io.release import read_release
from metstrack.train.api import train
from metstrack.train.config import TrainConfig, check_train_config
from metstrack.types import Cohort

optuna = require("optuna", extra="search", feature="metstrack search")

log = logging.getLogger(__name__)

PRUNERS = ("median", "percentile", "none")
SAMPLERS = ("tpe", "random")
PARAM_TYPES = ("float", "int", "categorical")
#: Derived search keys that are not fields of the training config.
DERIVED_KEYS = ("augment.strength",)
BEST_TOML = "best.toml"


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter.

    Attributes:
        key: Dotted training-config key (``"optim.lr"``) or a derived key.
        type: ``"float"``, ``"int"`` or ``"categorical"``.
        low: Lower bound (float/int).
        high: Upper bound (float/int).
        log: Sample on a log scale (float/int).
        step: Grid step (float/int; 0 = continuous / 1 for int).
        choices: Values of a categorical parameter.
    """

    key: str
    type: str
    low: float = math.nan
    high: float = math.nan
    log: bool = False
    step: float = 0.0
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SearchConfig:
    """The ``[search]`` table.

    Attributes:
        study_name: Optuna study name (the resume key, with the storage).
        storage: SQLAlchemy URL; empty means ``sqlite:///<out>/search.db``.
        n_trials: Finished (complete or pruned) trials wanted (``--trials`` overrides).
        sampler: ``"tpe"`` or ``"random"``.
        seed: Sampler seed (mixed with the number of trials already in the study).
        pruner: ``"median"``, ``"percentile"`` or ``"none"``.
        percentile: Percentile of the ``percentile`` pruner (prune below it).
        n_startup_trials: Trials finished before pruning starts.
        n_warmup_steps: Optimizer steps of a trial before it may be pruned.
        heartbeat_interval_s: Seconds between a running trial's heartbeats.
        grace_period_s: A RUNNING trial whose heartbeat is older is marked
            failed (its process died) and re-queued.
        max_retries: Re-queues of a failed trial.
        space: Parameter tables by dotted key (see the module docstring).
    """

    study_name: str = "metstrack-search"
    storage: str = ""
    n_trials: int = 20
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    percentile: float = 25.0
    n_startup_trials: int = 2
    n_warmup_steps: int = 0
    heartbeat_interval_s: int = 30
    grace_period_s: int = 90
    max_retries: int = 1
    space: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search`.

    Attributes:
        study_name: The Optuna study.
        storage: Its database URL.
        n_complete: Trials that ran to their end.
        n_pruned: Trials stopped by the pruner.
        n_failed: Trials that failed (e.g. killed; re-queued up to ``max_retries``).
        best_value: Best trial's value (its best validation score).
        best_params: Best trial's parameters.
        best_config: ``best.toml`` path.
        best_run_dir: Best trial's run folder.
    """

    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float
    best_params: dict[str, Any]
    best_config: Path | None
    best_run_dir: Path | None


# -- config --------------------------------------------------------------------------


def load_search_config(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[TrainConfig, SearchConfig, dict[str, Any]]:
    """Read a search TOML: the base training config, the ``[search]`` table, the raw base dict.

    Args:
        path: TOML file.
        overrides: ``section.key=value`` overrides of the base training config.

    Raises:
        ConfigError: Unreadable TOML, unknown keys anywhere (with suggestions),
            a bad parameter table, or a base config that does not check.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: search config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    raw_search = data.pop("search", None)
    if raw_search is None:
        raise ConfigError(f"{path}: no [search] table; add one with a [search.space] (see docs)")
    apply_overrides(data, overrides)
    base = from_dict(TrainConfig, data, where=str(path))
    check_train_config(base, where=str(path))
    search = from_dict(SearchConfig, raw_search, where=f"{path}: [search]")
    check_search_config(search, where=f"{path}: [search]")
    return base, search, data


def check_search_config(cfg: SearchConfig, *, where: str = "[search]") -> None:
    """Raise ConfigError for unknown pruners/samplers or a bad search space."""
    if cfg.pruner not in PRUNERS:
        raise ConfigError(
            f"{where}: pruner {cfg.pruner!r} is unknown; {did_you_mean(cfg.pruner, PRUNERS)}"
        )
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(
            f"{where}: sampler {cfg.sampler!r} is unknown; {did_you_mean(cfg.sampler, SAMPLERS)}"
        )
    if cfg.n_trials < 1:
        raise ConfigError(f"{where}: n_trials must be >= 1")
    if not cfg.space:
        raise ConfigError(f'{where}: the search space is empty; add [search.space."optim.lr"] etc.')
    param_specs(cfg, where=where)  # validates every parameter table


def param_specs(cfg: SearchConfig, *, where: str = "[search]") -> list[ParamSpec]:
    """The search space as :class:`ParamSpec` records, each key checked against TrainConfig."""
    out = []
    for key, table in cfg.space.items():
        w = f"{where}.space.{key!r}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{w}: expected a table with type, low/high or choices")
        _check_key(key, where=w)
        spec = from_dict(ParamSpec, {"key": key, **table}, where=w)
        if spec.type not in PARAM_TYPES:
            raise ConfigError(
                f"{w}: type {spec.type!r} is unknown; {did_you_mean(spec.type, PARAM_TYPES)}"
            )
        if spec.type == "categorical":
            if not spec.choices:
                raise ConfigError(f"{w}: a categorical parameter needs choices = [...]")
        else:
            if not (spec.low <= spec.high) or math.isnan(spec.low):
                raise ConfigError(f"{w}: needs low <= high, found low={spec.low}, high={spec.high}")
            if spec.log and spec.low <= 0:
                raise ConfigError(f"{w}: a log-scale parameter needs low > 0")
        out.append(spec)
    return out


def _check_key(key: str, *, where: str) -> None:
    if key in DERIVED_KEYS:
        return
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{where}: expected a dotted key section.field (e.g. optim.lr)")
    section, name = parts
    sections = {f.name: f for f in fields(TrainConfig)}
    if section not in sections:
        raise ConfigError(
            f"{where}: unknown section {section!r}; {did_you_mean(section, sections)}"
        )
    cls = TrainConfig.__dataclass_fields__[section].default_factory  # type: ignore[misc]
    names = [f.name for f in fields(cls())]  # type: ignore[arg-type]
    if name not in names:
        raise ConfigError(
            f"{where}: [{section}] has no key {name!r}; "
            + did_you_mean(
                name,
                names + ([k.split(".")[1] for k in DERIVED_KEYS if k.startswith(section + ".")]),
            )
        )


def apply_params(base: dict[str, Any] | TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The training config of one trial: ``base`` with ``params`` (dotted keys) applied.

    ``augment.strength`` scales the base augmentation (see the module docstring).

    Raises:
        ConfigError: A value the training config rejects.
    """
    data = to_dict(base) if is_dataclass(base) else copy.deepcopy(dict(base))
    full = to_dict(from_dict(TrainConfig, data, where="base config"))
    for key, value in params.items():
        if key == "augment.strength":
            full["augment"] = scaled_augment(full["augment"], float(value))
        else:
            set_dotted(full, key, value)
    cfg = from_dict(TrainConfig, full, where="trial config")
    check_train_config(cfg, where="trial config")
    return cfg


def scaled_augment(aug: Mapping[str, Any], strength: float) -> dict[str, Any]:
    """Augmentation settings scaled by ``strength`` (0 disables; clipped to valid ranges)."""
    out = dict(aug)
    s = max(0.0, float(strength))
    if s == 0.0:
        out["enabled"] = False
        return out
    for k in ("flip_prob", "affine_prob", "intensity_prob"):
        out[k] = min(1.0, float(aug[k]) * s)
    out["rotate_max_deg"] = min(45.0, float(aug["rotate_max_deg"]) * s)
    out["scale_max"] = min(0.45, float(aug["scale_max"]) * s)
    out["intensity_scale"] = min(0.45, float(aug["intensity_scale"]) * s)
    out["intensity_shift"] = float(aug["intensity_shift"]) * s
    return out


# -- TOML output ---------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ConfigError("TOML has no null; the config holds a None value")
    return json.dumps(str(v))


def to_toml(data: Mapping[str, Any], *, header: str = "") -> str:
    """TOML text of a nested dict of scalars, lists and tables (config dicts)."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        subs = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not subs):
            lines.append("")
            lines.append(f"[{prefix}]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subs:
            emit(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    emit("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def write_train_toml(cfg: TrainConfig, path: str | Path, *, header: str = "") -> Path:
    """Write a training config as TOML that ``load_train_config`` reads back unchanged."""
    text = to_toml(to_dict(cfg), header=header)
    # round-trip check before anything is written
    if from_dict(TrainConfig, tomllib.loads(text), where=str(path)) != cfg:
        raise ConfigError(f"{path}: the TOML form of the config does not read back identically")
    return write_text_atomic(path, text)


# -- the study -----------------------------------------------------------------------


def default_storage(out_dir: str | Path) -> str:
    """``sqlite:///<out>/search.db`` (absolute path)."""
    return f"sqlite:///{(Path(out_dir) / 'search.db').resolve()}"


def _make_storage(url: str, cfg: SearchConfig) -> optuna.storages.BaseStorage:
    from optuna import storages

    retry_cls = (
        storages.RetryHeartbeatStaleTrialCallback
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback")
        else storages.RetryFailedTrialCallback
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return storages.RDBStorage(
            url,
            heartbeat_interval=max(1, int(cfg.heartbeat_interval_s)),
            grace_period=max(2, int(cfg.grace_period_s)),
            heartbeat_stale_trial_callback=retry_cls(max_retry=cfg.max_retries),
        )


def _make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
        )
    if cfg.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            cfg.percentile, n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
        )
    return optuna.pruners.NopPruner()


def _suggest(trial: optuna.Trial, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(spec.key, list(spec.choices))
    if spec.type == "int":
        return trial.suggest_int(
            spec.key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
        )
    return trial.suggest_float(
        spec.key, float(spec.low), float(spec.high), step=spec.step or None, log=spec.log
    )


def open_study(cfg: SearchConfig, out_dir: str | Path, storage: str | None = None) -> optuna.Study:
    """Create or load the study (resuming when it exists in the storage)."""
    url = storage or cfg.storage or default_storage(out_dir)
    store = _make_storage(url, cfg)
    existing = 0
    with contextlib.suppress(KeyError):
        existing = len(optuna.load_study(study_name=cfg.study_name, storage=store).trials)
    sampler: optuna.samplers.BaseSampler
    seed = int(cfg.seed) + existing
    if cfg.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(1, cfg.n_startup_trials)
        )
    return optuna.create_study(
        study_name=cfg.study_name,
        storage=store,
        sampler=sampler,
        pruner=_make_pruner(cfg),
        direction="maximize",
        load_if_exists=True,
    )


def search(
    config_path: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    overrides: Sequence[str] = (),
    cohort: Cohort | None = None,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> SearchResult:
    """Run (or resume) a hyperparameter search.

    Args:
        config_path: Search TOML (base training config + ``[search]``).
        data_dir: Dataset in the release layout (co-registered studies).
        out_dir: Search folder: ``search.db``, ``trials/``, ``cache/``,
            ``best.toml``, ``trials.csv``, ``search.json``.
        n_trials: Finished trials wanted in the study (default ``[search] n_trials``).
        storage: SQLAlchemy URL (default ``[search] storage`` or SQLite in ``out_dir``).
        study_name: Overrides ``[search] study_name``.
        overrides: Overrides of the base training config.
        cohort: An already-read cohort.
        on_trial: Called with each finished trial.

    Returns:
        A :class:`SearchResult`.

    Raises:
        ConfigError: Bad config or storage URL.
    """
    from dataclasses import replace

    base, scfg, _raw = load_search_config(config_path, overrides)
    if study_name:
        scfg = replace(scfg, study_name=study_name)
    want = int(n_trials if n_trials is not None else scfg.n_trials)
    if want < 1:
        raise ConfigError("--trials must be >= 1")
    specs = param_specs(scfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or scfg.storage or default_storage(out)
    if cohort is None:
        cohort = read_release(data_dir)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    try:
        study = open_study(scfg, out, url)
    except (ValueError, ImportError) as exc:  # bad URL or missing driver
        raise ConfigError(f"--storage {url}: cannot open the study database ({exc})") from exc
    cache_dir = str((out / "cache").resolve())

    def objective(trial: optuna.Trial) -> float:
        params = {s.key: _suggest(trial, s) for s in specs}
        cfg = apply_params(base, params)
        if not cfg.data.cache_dir:
            cfg = replace(cfg, data=replace(cfg.data, cache_dir=cache_dir))
        run_dir = out / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        best = -math.inf

        def report(epoch: int, step: int, scores: dict[str, float]) -> None:
            nonlocal best
            value = float(scores.get("score", math.nan))
            if math.isnan(value):
                value = 0.0
            best = max(best, value)
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("best_score", best)
                raise optuna.TrialPruned(f"validation score {value:.4f} at step {step}")

        result = train(cfg, data_dir, run_dir, cohort=cohort, score_hooks=[report])
        history = [float(r.get("score", math.nan)) for r in result.history]
        values = [v for v in history if not math.isnan(v)]
        value = (
            max(values) if values else (0.0 if math.isnan(result.best_score) else result.best_score)
        )
        trial.set_user_attr("best_score", value)
        trial.set_user_attr("best_ckpt", str(result.best_ckpt))
        trial.set_user_attr("scores", {k: float(v) for k, v in result.scores.items()})
        return value

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        write_search_outputs(study, base, out)
        if on_trial is not None:
            on_trial(trial)

    done = _finished(study)
    remaining = want - done
    if remaining > 0:
        log.info(
            "study %s: %d finished, running %d more trial(s)", scfg.study_name, done, remaining
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                n_trials=remaining,
                callbacks=[
                    optuna.study.MaxTrialsCallback(
                        want,
                        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED),
                    ),
                    after,
                ],
                catch=(),
            )
    else:
        log.info("study %s already holds %d finished trial(s)", scfg.study_name, done)
    best_path = write_search_outputs(study, base, out)
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    best_trial = _best(study)
    return SearchResult(
        study_name=scfg.study_name,
        storage=url,
        n_complete=states.count(S.COMPLETE),
        n_pruned=states.count(S.PRUNED),
        n_failed=states.count(S.FAIL),
        best_value=float(best_trial.value) if best_trial else math.nan,
        best_params=dict(best_trial.params) if best_trial else {},
        best_config=best_path,
        best_run_dir=Path(best_trial.user_attrs["run_dir"]) if best_trial else None,
    )


def _finished(study: optuna.Study) -> int:
    S = optuna.trial.TrialState
    return sum(t.state in (S.COMPLETE, S.PRUNED) for t in study.trials)


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    return max(done, key=lambda t: (t.value, -t.number))


def write_search_outputs(study: optuna.Study, base: TrainConfig, out: Path) -> Path | None:
    """Rewrite ``trials.csv``, ``search.json`` and ``best.toml`` from the study's state."""
    rows = []
    for t in study.trials:
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "best_score": t.user_attrs.get("best_score"),
                "last_step": t.last_step,
                **{f"param:{k}": v for k, v in t.params.items()},
                "run_dir": t.user_attrs.get("run_dir", ""),
            }
        )
    import pandas as pd

    write_csv_atomic(out / "trials.csv", pd.DataFrame(rows))
    best = _best(study)
    path = None
    if best is not None:
        cfg = apply_params(base, best.params)
        header = (
            f"Best trial {best.number} of study {study.study_name!r}: best validation score "
            f"{best.value:.6f}\nParameters: {json.dumps(best.params)}\n"
            "Reproduce with: metstrack train --config best.toml --data DIR --out DIR"
        )
        path = write_train_toml(cfg, out / BEST_TOML, header=header)
    write_json_atomic(
        out / "search.json",
        {
            "study_name": study.study_name,
            "n_trials": len(study.trials),
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": best.params if best else None,
            "best_config": str(path) if path else None,
        },
    )
    return path
