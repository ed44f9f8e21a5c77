"""The ``metstrack`` command: one Typer app, one module per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from metstrack import __version__
from metstrack.cli import ablate as ablate_cmd
from metstrack.cli import benchmark as benchmark_cmd
from metstrack.cli import catalog as catalog_cmd
from metstrack.cli import demo as demo_cmd
from metstrack.cli import evaluate as evaluate_cmd
from metstrack.cli import export as export_cmd
from metstrack.cli import info as info_cmd
from metstrack.cli import ingest as ingest_cmd
from metstrack.cli import pacs as pacs_cmd
from metstrack.cli import predict as predict_cmd
from metstrack.cli import preprocess as preprocess_cmd
from metstrack.cli import pretrain as pretrain_cmd
from metstrack.cli import report as report_cmd
from metstrack.cli import search as search_cmd
from metstrack.cli import survival as survival_cmd
from metstrack.cli import synth as synth_cmd
from metstrack.cli import track as track_cmd
from metstrack.cli import train as train_cmd
from metstrack.cli import validate as validate_cmd
from metstrack.cli.common import setup_logging

app = typer.Typer(
    name="metstrack",
    help="Longitudinal brain-metastasis MRI: synthesise, validate, segment, track, analyse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"metstrack {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    setup_logging(verbose)


app.command("demo")(demo_cmd.demo)
app.command("info")(info_cmd.info)
app.command("ingest")(ingest_cmd.ingest)
app.command("dicom-scan")(ingest_cmd.dicom_scan)
app.command("export-rtstruct")(export_cmd.export_rtstruct)
app.command("export")(export_cmd.export)
app.command("pull")(pacs_cmd.pull)
app.command("push")(pacs_cmd.push)
app.command("preprocess")(preprocess_cmd.preprocess)
app.command("catalog")(catalog_cmd.catalog)
app.command("validate")(validate_cmd.validate)
app.command("track")(track_cmd.track)
app.command("train")(train_cmd.train)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("survival")(survival_cmd.survival)
app.command("report")(report_cmd.report)
app.command("synth")(synth_cmd.synth)
app.command("predict")(predict_cmd.predict)
app.command("benchmark")(benchmark_cmd.benchmark)
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("search")(search_cmd.search)
app.command("ablate")(ablate_cmd.ablate)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
