"""``metstrack preprocess``: canonical, co-registered copy of a release-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from metstrack.cli.common import (
    EXIT_DATA_ERROR,
    ExecutorOption,
    SchedulerOption,
    TaskMemoryOption,
    console,
    err_console,
    executor_from_options,
    guarded,
    progress,
    usage_error,
)
from metstrack.errors import ConfigError
from metstrack.io.labels import parse_label_values


def preprocess(
    data: Annotated[Path, typer.Option("--data", help="Input dataset (any supported layout).")],
    out: Annotated[Path, typer.Option("--out", help="Output dataset folder.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of PreprocessConfig.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    no_brain_mask: Annotated[
        bool, typer.Option("--no-brain-mask", help="Skull-stripped input: brain = non-zero voxels.")
    ] = False,
    brain_method: Annotated[
        str | None,
        typer.Option(
            "--brain-mask",
            help="Brain-mask method: auto (default), deepbet, heuristic, nonzero or none.",
        ),
    ] = None,
    intervals: Annotated[
        Path | None,
        typer.Option(
            "--intervals",
            help="CSV of StudyID,DaysFromBaselineScan for inputs without dates (BraTS-METS).",
        ),
    ] = None,
    n4: Annotated[bool, typer.Option("--n4", help="N4 bias-field correction.")] = False,
    affine: Annotated[
        bool, typer.Option("--affine", help="Affine stage after the rigid one (through time).")
    ] = False,
    layout: Annotated[
        str,
        typer.Option("--layout", help="release | brats-mets | brainmetshare | bids | study | auto"),
    ] = "auto",
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Register the run in this catalog file.")
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Label values that are lesion: brats-tc (1,3), brats-et (3), brats-wt (1,2,3) "
            "or integers such as 2,3 (default: binary labels; the layout's classes).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")
    ] = None,
    executor: ExecutorOption = "local",
    scheduler: SchedulerOption = None,
    task_memory: TaskMemoryOption = None,
) -> None:
    """Reorient, resample, register (within study and through time), mask and normalise."""
    from metstrack.config import load_config
    from metstrack.preprocess.config import PreprocessConfig
    from metstrack.preprocess.pipeline import preprocess_dataset

    label_values = None
    if labels is not None:
        try:
            label_values = parse_label_values(labels)
        except ConfigError as exc:
            usage_error(exc)
    values = {
        "brain_mask": False if no_brain_mask else None,
        "brain_method": brain_method,
        "n4": True if n4 else None,
        "through_time.affine": True if affine else None,
    }
    with guarded():
        cfg = load_config(PreprocessConfig, config, list(set_ or []), values=values)
        with (
            executor_from_options(executor, workers, scheduler, task_memory) as pool,
            progress() as bar,
        ):
            task = bar.add_task("preprocess", total=None)
            report = preprocess_dataset(
                data,
                out,
                cfg,
                workers,
                layout=layout,
                catalog_path=catalog,
                intervals=intervals,
                on_study=lambda o: bar.advance(task),
                on_start=lambda n: bar.update(task, total=n),
                label_values=label_values,
                executor=pool,
            )
        console.print(
            f"preprocessed {data} -> {out}: {report.count('done')} done, "
            f"{report.count('skipped')} already finished, {report.count('failed')} failed "
            f"in {report.seconds:.1f} s"
        )
        # One line per problem: a bad baseline fails every study of its patient.
        by_message: dict[str, list[str]] = {}
        for o in report.failed:
            by_message.setdefault(o.message, []).append(f"{o.patient_id}/{o.study_id}")
        for message, studies in by_message.items():
            err_console.print(
                f"[bold red]failed:[/] {', '.join(studies)}: {escape(message)}", soft_wrap=True
            )
        if report.failed:
            raise typer.Exit(EXIT_DATA_ERROR)
