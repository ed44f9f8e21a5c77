"""``metstrack benchmark``: train STT and its baselines under one budget and write the leaderboard."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from metstrack.cli.common import console, guarded, usage_error
from metstrack.errors import ConfigError


def benchmark(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="Benchmark TOML (configs/benchmark.toml)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).")],
    models: Annotated[
        str | None,
        typer.Option("--models", help="Comma-separated row names to run (default: all)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one setting as section.key=value (repeatable), "
            "e.g. --set budget.train_minutes=2.",
        ),
    ] = None,
) -> None:
    """Generate the seeded cohort, train every model under the same budget, evaluate and rank.

    Writes OUT/leaderboard.{md,csv,json} (one row per model: sensitivity per
    lesion-size stratum, FP per scan, lesion F1, lesion-wise and voxel Dice,
    HD95, tracking accuracy, training and inference time, parameters, peak
    memory) with the git commit and the machine. Exit 1 on a bad config or
    data error, 2 on bad command-line usage (e.g. an unknown --models name).
    """
    from metstrack.benchmark.config import load_benchmark_config, select_models
    from metstrack.benchmark.runner import run_benchmark

    if logging.getLogger().level > logging.DEBUG:
        import lightning.pytorch  # noqa: F401 - it sets its loggers' levels on import

        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with guarded():
        cfg = load_benchmark_config(config, overrides or ())
    names = [m.strip() for m in models.split(",") if m.strip()] if models else []
    try:
        select_models(cfg, names)
    except ConfigError as exc:
        usage_error(exc)
    with guarded():
        result = run_benchmark(
            cfg,
            out,
            models=names,
            config_path=config,
            on_event=lambda msg: console.print(f"[cyan]benchmark[/] {escape(msg)}"),
        )
    frame = result.leaderboard
    table = Table(title=f"leaderboard ({len(frame)} models, test patients)")
    cols = [
        ("model", "model", None),
        ("sens. <10 mm3", "sensitivity_lt10_mm3", 3),
        ("FP/scan", "fp_per_scan", 2),
        ("lesion F1", "lesion_f1", 3),
        ("lesion Dice", "lesionwise_dice", 3),
        ("Dice", "dice", 3),
        ("HD95 mm", "hd95_mm", 1),
        ("track acc.", "tracking_link_accuracy", 3),
        ("steps", "train_steps", None),
        ("train s", "train_time_s", 0),
        ("peak MiB", "infer_peak_rss_mb", 0),
    ]
    for head, _, _ in cols:
        table.add_column(head)
    for _, row in frame.iterrows():
        cells = []
        for _, key, digits in cols:
            v = row[key]
            if digits is None:
                cells.append(str(v))
            elif isinstance(v, float) and math.isnan(v):
                cells.append("n/a")
            else:
                cells.append(f"{float(v):.{digits}f}")
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"leaderboard: {escape(str(result.paths['md']))} and {escape(str(result.paths['csv']))}"
    )
