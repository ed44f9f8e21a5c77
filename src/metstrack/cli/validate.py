"""``metstrack validate DIR``: check a whole dataset and list every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import EXIT_DATA_ERROR, console, err_console, guarded, progress
from metstrack.errors import ConfigError


def validate(
    directory: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, dir_okay=True, help="Dataset folder to check."
        ),
    ],
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="Dataset layout: auto, release, bids, brats-mets or brainmetshare.",
        ),
    ] = "auto",
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the report as JSON to this file."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Threads reading images in parallel.")
    ] = 1,
    label_classes: Annotated[
        str | None,
        typer.Option(
            "--label-classes",
            help="Label values forming the lesion mask, e.g. 1,3 (brats-mets, brainmetshare, "
            "bids only).",
        ),
    ] = None,
) -> None:
    """Check every file and table of a dataset; exit 1 if any error is found.

    Checks: images readable and valid, one grid per study, binary labels,
    tables consistent with files, splits by patient, clinical rows naming known
    patients, days in RelativeTimepoint order. Warnings (e.g. a missing
    modality) do not fail the run.
    """
    from metstrack.core.atomic import write_json_atomic
    from metstrack.io.layouts import resolve_layout
    from metstrack.io.validate import validate_dataset

    if layout != "auto":
        try:
            resolve_layout(layout)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--layout") from None
    options = {}
    if label_classes is not None:
        try:
            options["label_classes"] = tuple(int(v) for v in label_classes.split(","))
        except ValueError:
            raise typer.BadParameter(
                f"expected comma-separated integers such as 1,3, got {label_classes!r}",
                param_hint="--label-classes",
            ) from None
    with guarded():
        try:
            with progress() as bar:
                task = bar.add_task("checking studies", total=None)
                report = validate_dataset(
                    directory,
                    layout=layout,
                    workers=workers,
                    options=options,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--label-classes") from None
        if report.problems:
            table = Table(title=f"Problems in {directory}", show_lines=False)
            table.add_column("severity")
            table.add_column("file", overflow="fold")
            table.add_column("check")
            table.add_column("message", overflow="fold")
            for p in report.problems:
                style = "bold red" if p.is_error else "yellow"
                table.add_row(
                    f"[{style}]{p.severity}[/]", report.relative(p.file), p.check, p.message
                )
            console.print(table)
        console.print(
            f"layout {report.layout}: {report.n_patients} patients, {report.n_studies} studies, "
            f"{report.n_files} files checked; "
            f"[bold]{report.n_errors} error(s), {report.n_warnings} warning(s)[/]",
            soft_wrap=True,
        )
        if json_out is not None:
            write_json_atomic(json_out, report.to_dict())
            err_console.print(f"report written to {json_out}", soft_wrap=True)
        if not report.ok:
            raise typer.Exit(EXIT_DATA_ERROR)
        console.print("[green]dataset is valid[/]")
