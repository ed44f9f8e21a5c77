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
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metstrack.core.atomic import write_csv_atomic, write_json_atomic
from metstrack.core.extras import require
from metstrack.errors import ConfigError
from metstrack.io.release import read_release
from metstrack.train.api import train
from metstrack.train.config import TrainConfig
from metstrack.train.search_space import (
    BEST_TOML,
    ParamSpec,
    SearchConfig,
    SearchResult,
    apply_params,
    default_storage,
    load_search_config,
    param_specs,
    write_train_toml,
)
from metstrack.types import Cohort

optuna = require("optuna", extra="search", feature="metstrack search")

log = logging.getLogger(__name__)


# -- the study -----------------------------------------------------------------------


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
        trial.set_user_attr(
            "scores",
            {k: float(v) for k, v in result.scores.as_dict().items()} if result.scores else {},
        )
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
