"""``metstrack search``: Optuna hyperparameter search over training configs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, usage_error
from metstrack.cli.pretrain import _quiet_lightning
from metstrack.errors import ConfigError


def search(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Training TOML with a [search] table.")
    ],
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Dataset in the release layout, co-registered.")
    ] = Path("."),
    out: Annotated[Path, typer.Option("--out", "-o", help="Search folder (created).")] = Path(
        "search"
    ),
    trials: Annotated[
        int | None,
        typer.Option("--trials", "-n", help="Finished trials wanted in the study.", min=1),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="SQLAlchemy URL of the study (default sqlite:///OUT/search.db)."
        ),
    ] = None,
    study_name: Annotated[
        str | None, typer.Option("--study-name", help="Overrides [search] study_name.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a base training setting, e.g. --set optim.lr=1e-3."),
    ] = None,
) -> None:
    """Search hyperparameters with Optuna; rerun the same command to resume a killed search.

    Each trial trains in OUT/trials/trial_NNNN and reports every validation
    pass to the pruner; its value is its best validation score. OUT/best.toml
    reproduces the best trial with `metstrack train --config`. See docs/search.md.
    """
    with guarded():  # a missing `search` extra is one line, not a traceback
        from metstrack.train.search import search as run_search
        from metstrack.train.search_space import load_search_config

    _quiet_lightning()
    try:
        load_search_config(config, list(set_ or []))
    except ConfigError as exc:
        usage_error(exc)
    with guarded():
        try:
            result = run_search(
                config,
                data,
                out,
                n_trials=trials,
                storage=storage,
                study_name=study_name,
                overrides=list(set_ or []),
            )
        except ConfigError as exc:
            usage_error(exc)
    table = Table(title=f"metstrack search: study {result.study_name!r}", show_header=False)
    table.add_row("storage", result.storage)
    table.add_row(
        "trials",
        f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed",
    )
    best = "n/a" if math.isnan(result.best_value) else f"{result.best_value:.4f}"
    table.add_row("best value", best)
    for k, v in result.best_params.items():
        table.add_row(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
    table.add_row("best config", str(result.best_config))
    console.print(table)
