"""``metstrack report``: the static HTML report a clinician can read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metstrack.cli.common import console, guarded, progress, usage_error


def report(
    out: Annotated[Path, typer.Option("--out", help="Report folder (index.html inside).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Dataset root (images, reference labels); required unless --benchmark "
            "alone is reported.",
        ),
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Predictions root (metstrack predict).")
    ] = None,
    evaluation: Annotated[Path | None, typer.Option(help="Output of metstrack evaluate.")] = None,
    tracking: Annotated[Path | None, typer.Option(help="Output of metstrack track.")] = None,
    survival: Annotated[Path | None, typer.Option(help="Output of metstrack survival.")] = None,
    benchmark: Annotated[
        Path | None,
        typer.Option(help="Output of metstrack benchmark: its FROC comparison and curves."),
    ] = None,
    patient: Annotated[
        list[str] | None, typer.Option(help="Only these patients (repeatable).")
    ] = None,
    title: Annotated[str, typer.Option(help="Report title.")] = "metstrack report",
) -> None:
    """Write a self-contained HTML report: cohort page and one page per patient.

    With --benchmark and no --data, the report is the benchmark's FROC comparison alone.
    """
    from metstrack.errors import DatasetError

    if data is None and benchmark is None:
        usage_error("give --data DATASET (and the outputs to show), or --benchmark FOLDER")
    for name, path in (
        ("--predictions", predictions),
        ("--evaluation", evaluation),
        ("--tracking", tracking),
        ("--survival", survival),
        ("--benchmark", benchmark),
    ):
        if path is not None and not path.is_dir():
            with guarded():
                raise DatasetError(f"{path}: {name} folder not found")
    if data is None:
        if predictions or evaluation or tracking or survival or patient:
            usage_error(
                "--predictions, --evaluation, --tracking, --survival and --patient need --data"
            )
        from metstrack.report.benchmark import build_benchmark_report

        with guarded():
            index = build_benchmark_report(benchmark, out, title=title)
        console.print(f"report written: {index}")
        return

    from metstrack.io.layouts import read_dataset
    from metstrack.report.build import ReportInputs, build_report

    with guarded():
        cohort = read_dataset(data)
        chosen = [p for p in cohort.patients if not patient or p.patient_id in set(patient)]
        inputs = ReportInputs(
            data, predictions, evaluation, tracking, survival, title, benchmark=benchmark
        )
        with progress() as bar:
            task = bar.add_task("report", total=len(chosen))
            index = build_report(
                inputs,
                out,
                cohort=cohort,
                patients=[p.patient_id for p in chosen],
                progress=lambda _pid: bar.advance(task),
            )
    console.print(f"report written: {index}")
