"""``metstrack pretrain``: self-supervised pretraining on every study of a cohort."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, usage_error
from metstrack.errors import ConfigError


def _quiet_lightning() -> None:
    if logging.getLogger().level > logging.DEBUG:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def pretrain(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Config overrides as section.key=value, e.g. trainer.max_steps=200.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Dataset in the release layout, co-registered.")
    ] = Path("."),
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created).")] = Path(
        "pretrain"
    ),
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML with [model] [data] [corrupt] [objective] ..."),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option("--objective", help="restore (Models Genesis) or restore+order (temporal)."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps.")] = None,
    time_budget_min: Annotated[
        float | None, typer.Option("--time-budget-min", help="Wall-clock limit in minutes.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the whole run.")] = None,
) -> None:
    """Pretrain the encoder, ConvLSTM and decoder by restoring corrupted studies.

    Every study is used, labelled or not (labels are never read); patients of
    the test split are left out unless data.include_test = true. Writes
    pretrained.pt (give it to `metstrack train --init-weights`), config.json,
    loss_log.csv and result.json. See docs/pretrain.md.
    """
    from metstrack.train.pretrain import pretrain as run_pretrain
    from metstrack.train.pretrain_config import load_pretrain_config

    _quiet_lightning()
    values = {
        "objective.name": objective,
        "trainer.max_steps": max_steps,
        "trainer.time_budget_min": time_budget_min,
        "trainer.seed": seed,
    }
    try:
        cfg = load_pretrain_config(config, list(overrides or []), values=values)
    except ConfigError as exc:
        usage_error(exc)
    with guarded():
        result = run_pretrain(cfg, data, out)
    table = Table(title=f"metstrack pretrain: {result.run_dir}", show_header=False)
    table.add_row("objective", cfg.objective.name)
    table.add_row("studies (patients)", f"{result.n_studies} ({result.n_patients})")
    table.add_row("steps", str(result.steps))
    table.add_row("fixed-sample loss", f"{result.initial_loss:.4f} -> {result.final_loss:.4f}")
    table.add_row("weights", str(result.weights))
    table.add_row("wall time", f"{result.elapsed_s:.0f} s")
    console.print(table)
