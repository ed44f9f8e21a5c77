"""``metstrack train``: train STT or a baseline on a cohort's patient sequences."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, usage_error
from metstrack.errors import ConfigError


def train(
    data: Annotated[
        Path,
        typer.Option("--data", "-d", help="Dataset in the release layout, co-registered in time."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created).")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Config overrides as section.key=value, e.g. optim.lr=3e-4 model.width=0.25.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML file with every setting (see docs/training.md)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue from a checkpoint (last.ckpt).")
    ] = None,
    init_weights: Annotated[
        Path | None,
        typer.Option(
            "--init-weights",
            help="Start from pretrained weights (metstrack pretrain) or a checkpoint; "
            "unmatched keys are listed in init_weights.json.",
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option("--max-epochs", help="Stop after this many epochs.")
    ] = None,
    time_budget_min: Annotated[
        float | None,
        typer.Option("--time-budget-min", help="Stop after this many wall-clock minutes."),
    ] = None,
    devices: Annotated[
        int | None, typer.Option("--devices", help="Devices per node (DDP when > 1).")
    ] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", help="Nodes (DDP).")] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="Lightning strategy: auto, ddp, ddp_spawn.")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help="cpu, gpu or auto.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="32-true, 16-mixed or bf16-mixed.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the whole run.")] = None,
) -> None:
    """Train a segmentation network on patient sequences and keep the best checkpoint.

    Settings come from the defaults, then --config, then the key=value
    overrides, then the flags. The run folder receives config.json (resolved
    config, version, data fingerprint), checkpoints/best.ckpt and last.ckpt,
    logs/metrics.csv, validation.csv and result.json.
    """
    from metstrack.train.api import train as run_training
    from metstrack.train.config import load_train_config

    if logging.getLogger().level > logging.DEBUG:
        # Lightning logs its own INFO banners through a separate handler; keep them
        # for --verbose only so the run's output stays readable.
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)

    flags = {
        "trainer.max_steps": max_steps,
        "trainer.max_epochs": max_epochs,
        "trainer.time_budget_min": time_budget_min,
        "trainer.devices": devices,
        "trainer.num_nodes": num_nodes,
        "trainer.strategy": strategy,
        "trainer.accelerator": accelerator,
        "trainer.precision": precision,
        "trainer.seed": seed,
        "trainer.init_weights": str(init_weights) if init_weights is not None else None,
    }
    if max_steps is not None and max_epochs is None:
        flags["trainer.max_epochs"] = -1  # --max-steps alone decides the length
    try:
        cfg = load_train_config(config, list(overrides or []), values=flags)
    except ConfigError as exc:
        usage_error(exc)
    with guarded():
        try:
            result = run_training(cfg, data, out, resume=resume)
        except ConfigError as exc:
            usage_error(exc)
    if result.rank != 0:
        return
    table = Table(title=f"metstrack train: {result.run_dir}", show_header=False)
    table.add_row("steps", f"{result.global_step} ({result.stopped_by})")
    table.add_row("epochs", str(result.epochs))
    for key in ("lesion_f1", "small_sensitivity", "fp_per_scan", "dice"):
        v = result.scores.get(key) if result.scores is not None else math.nan
        table.add_row(f"best {key}", "n/a" if math.isnan(v) else f"{v:.3f}")
    table.add_row("best checkpoint", str(result.best_ckpt))
    table.add_row("last checkpoint", str(result.last_ckpt))
    table.add_row("wall time", f"{result.elapsed_s:.0f} s")
    console.print(table)
