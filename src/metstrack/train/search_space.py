"""The search space and settings of ``metstrack search`` (no Optuna needed to read or check them).

:class:`SearchConfig` is the ``[search]`` table of a training TOML;
:func:`param_specs` turns it into typed :class:`ParamSpec` records and
:func:`apply_params` applies one trial's values to the base training config,
which :func:`write_train_toml` writes back as a TOML ``metstrack train`` reads.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from metstrack.config import apply_overrides, from_dict, set_dotted, to_dict
from metstrack.core.atomic import write_text_atomic
from metstrack.errors import ConfigError, did_you_mean
from metstrack.train.config import TrainConfig, check_train_config

#: Optuna pruners (``[search] pruner``).
Pruner = Literal["median", "percentile", "none"]
#: Optuna samplers (``[search] sampler``).
Sampler = Literal["tpe", "random"]
PRUNERS: tuple[str, ...] = get_args(Pruner)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
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
    sampler: Sampler = "tpe"
    seed: int = 0
    pruner: Pruner = "median"
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


def default_storage(out_dir: str | Path) -> str:
    """``sqlite:///<out>/search.db`` (absolute path)."""
    return f"sqlite:///{(Path(out_dir) / 'search.db').resolve()}"
