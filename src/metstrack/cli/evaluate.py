"""``metstrack evaluate``: voxel, lesion-wise, small-lesion and longitudinal metrics of a cohort."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import (
    ExecutorOption,
    SchedulerOption,
    TaskMemoryOption,
    console,
    executor_from_options,
    guarded,
    progress,
    usage_error,
)
from metstrack.errors import ConfigError, did_you_mean
from metstrack.io.labels import parse_label_values

#: Rows of the printed table: (metric name in the summary, label).
HEADLINE_ROWS: tuple[tuple[str, str], ...] = (
    ("lesion_f1", "Lesion F1"),
    ("lesion_sensitivity", "Lesion sensitivity"),
    ("sensitivity_[0,10)", "Sensitivity < 10 mm3"),
    ("lesion_precision", "Lesion precision"),
    ("fp_per_scan", "False positives / scan"),
    ("dice", "Dice (voxel)"),
    ("hd95_mm", "HD95 (mm)"),
    ("lesionwise_dice", "Lesion-wise Dice (penalised)"),
    ("lesionwise_hd95_mm", "Lesion-wise HD95 (mm, penalised)"),
    ("new_lesion_sensitivity", "New-lesion sensitivity"),
    ("count_change_abs_error", "|Count change error|"),
    ("volume_change_abs_error_mm3", "|Volume change error| (mm3)"),
)


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _choice(value: str | None, options: tuple[str, ...], flag: str) -> str | None:
    if value is not None and value not in options:
        raise typer.BadParameter(f"{value!r}; {did_you_mean(value, options)}", param_hint=flag)
    return value


def _label_values(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return parse_label_values(text)
    except ConfigError as exc:
        usage_error(exc)


def evaluate(
    pred: Annotated[
        Path,
        typer.Option(
            "--pred", help="Predictions root (<pred>/predictions/patientId/<P>/studyId/<S>/mask)."
        ),
    ],
    ref: Annotated[
        Path,
        typer.Option(
            "--ref",
            help="Reference: a dataset in any layout (release, BraTS-METS, BIDS, BrainMetShare, "
            "study folder), a DICOM folder with RTSTRUCT, or a plain folder of masks.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder for the tables.")],
    mode: Annotated[
        str | None, typer.Option("--mode", help="Lesion matching: overlap (default) or brats.")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Binarise probability-map predictions at this value."),
    ] = None,
    match_threshold: Annotated[
        float | None,
        typer.Option("--match-threshold", help="overlap mode: score must exceed this (0)."),
    ] = None,
    match_objective: Annotated[
        str | None,
        typer.Option(
            "--match-objective",
            help="overlap mode: overlap (largest total overlap, default) or pairs "
            "(most pairs first).",
        ),
    ] = None,
    criterion: Annotated[
        str | None, typer.Option("--criterion", help="overlap mode score: iou (default) or ior.")
    ] = None,
    min_volume_mm3: Annotated[
        float | None,
        typer.Option("--min-volume-mm3", help="brats mode: ignore reference lesions <= this."),
    ] = None,
    bootstrap: Annotated[
        int | None, typer.Option("--bootstrap", help="Patient bootstrap resamples (1000).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Bootstrap seed (0).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Reference values that are lesion: brats-tc (1,3), brats-et (3), brats-wt "
            "(1,2,3) or integers such as 2,3 (default: binary references only).",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of evaluation settings.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Setting override key=value (repeatable), e.g. beta=1."),
    ] = None,
    executor: ExecutorOption = "local",
    scheduler: SchedulerOption = None,
    task_memory: TaskMemoryOption = None,
) -> None:
    """Evaluate predictions against a labelled dataset: per-study, per-lesion and summary tables.

    --pred is what `metstrack predict` wrote (or a plain folder of mask files, then
    paired by file name with the plain folder --ref).

    Writes studies.csv, lesions.csv, longitudinal.csv, summary.csv, summary.json and
    config.json to --out, and prints the headline metrics with 95% bootstrap intervals.
    """
    from metstrack.metrics.matching import CRITERIA, MATCH_MODES, OBJECTIVES  # lazy: scipy

    _choice(mode, MATCH_MODES, "--mode")
    _choice(criterion, CRITERIA, "--criterion")
    _choice(match_objective, OBJECTIVES, "--match-objective")
    label_values = _label_values(labels)
    with guarded():
        from metstrack.config import load_config
        from metstrack.workflows.evaluate import EvaluationConfig, evaluate_predictions

        given = {
            "mode": mode,
            "criterion": criterion,
            "match_objective": match_objective,
            "match_threshold": match_threshold,
            "min_ref_volume_mm3": min_volume_mm3,
            "prob_threshold": threshold,
            "n_bootstrap": bootstrap,
            "seed": seed,
            "label_values": label_values,
        }
        cfg = load_config(EvaluationConfig, config, list(overrides or []), values=given)
        with (
            executor_from_options(executor, workers, scheduler, task_memory) as pool,
            progress() as bar,
        ):
            task = bar.add_task("evaluate", total=None)
            result, paths = evaluate_predictions(
                pred,
                ref,
                out,
                cfg,
                workers=workers,
                executor=pool,
                on_start=lambda n: bar.update(task, total=n),
                on_done=lambda ev: bar.advance(task),
            )
    s = result.summary
    table = Table(
        title=(
            f"{s.n_studies} studies, {s.n_patients} patients, mode {cfg.mode}"
            f" ({s.n_missing_predictions} missing predictions)"
        )
    )
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column(f"{round(100 * cfg.confidence)}% CI", justify="right")
    table.add_column("n defined", justify="right")
    for name, label in HEADLINE_ROWS:
        m = s.metric(name)
        table.add_row(
            label, _fmt(m.value), f"{_fmt(m.ci_low)} .. {_fmt(m.ci_high)}", str(m.n_defined)
        )
    console.print(table)
    console.print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")
