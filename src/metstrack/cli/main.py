"""The ``metstrack`` command: one Typer app, one module per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from metstrack import __version__
from metstrack.cli import info as info_cmd
from metstrack.cli import validate as validate_cmd
from metstrack.cli import track as track_cmd
from metstrack.cli import train as train_cmd
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


app.command("info")(info_cmd.info)
app.command("validate")(validate_cmd.validate)
app.command("track")(track_cmd.track)
app.command("train")(train_cmd.train)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
