"""``metstrack preprocess``: canonical, co-registered copy of a release-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metstrack.cli.common import EXIT_DATA_ERROR, console, err_console, guarded, progress


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
        str, typer.Option("--layout", help="release | brats-mets | brainmetshare | bids | auto")
    ] = "auto",
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Register the run in this catalog file.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")
    ] = None,
) -> None:
    """Reorient, resample, register (within study and through time), mask and normalise."""
    from metstrack.config import load_config
    from metstrack.preprocess.pipeline import PreprocessConfig, preprocess_dataset

    overrides = list(set_ or [])
    if no_brain_mask:
        overrides.append("brain_mask=false")
    if brain_method is not None:
        overrides.append(f'brain_method="{brain_method}"')
    if n4:
        overrides.append("n4=true")
    if affine:
        overrides.append("through_time.affine=true")
    with guarded():
        cfg = load_config(PreprocessConfig, config, overrides)
        with progress() as bar:
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
            )
        console.print(
            f"preprocessed {data} -> {out}: {report.count('done')} done, "
            f"{report.count('skipped')} already finished, {report.count('failed')} failed "
            f"in {report.seconds:.1f} s"
        )
        for o in report.failed:
            err_console.print(f"[bold red]failed:[/] {o.patient_id}/{o.study_id}: {o.message}")
        if report.failed:
            raise typer.Exit(EXIT_DATA_ERROR)
