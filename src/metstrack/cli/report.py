"""``metstrack report``: the static HTML report a clinician can read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metstrack.cli.common import console, guarded, progress


def report(
    data: Annotated[Path, typer.Option("--data", help="Dataset root (images, reference labels).")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (index.html inside).")],
    predictions: Annotated[
        Path | None, typer.Option(help="Predictions root (metstrack predict).")
    ] = None,
    evaluation: Annotated[Path | None, typer.Option(help="Output of metstrack evaluate.")] = None,
    tracking: Annotated[Path | None, typer.Option(help="Output of metstrack track.")] = None,
    survival: Annotated[Path | None, typer.Option(help="Output of metstrack survival.")] = None,
    patient: Annotated[
        list[str] | None, typer.Option(help="Only these patients (repeatable).")
    ] = None,
    title: Annotated[str, typer.Option(help="Report title.")] = "metstrack report",
) -> None:
    """Write a self-contained HTML report: cohort page and one page per patient."""
    from metstrack.io.layouts import read_dataset
    from metstrack.report.build import ReportInputs, build_report

    with guarded():
        for name, path in (
            ("--predictions", predictions),
            ("--evaluation", evaluation),
            ("--tracking", tracking),
            ("--survival", survival),
        ):
            if path is not None and not path.is_dir():
                from metstrack.errors import DatasetError

                raise DatasetError(f"{path}: {name} folder not found")
        cohort = read_dataset(data)
        chosen = [p for p in cohort.patients if not patient or p.patient_id in set(patient)]
        inputs = ReportInputs(data, predictions, evaluation, tracking, survival, title)
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
