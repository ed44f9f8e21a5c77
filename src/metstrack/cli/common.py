"""Helpers shared by the CLI command modules: consoles, error handling, progress."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metstrack.errors import MetstrackError

#: Results go to stdout, diagnostics to stderr.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: Exit code for a data error (bad input file, inconsistent dataset).
EXIT_DATA_ERROR = 1
#: Exit code for a usage error (bad option); Typer uses it too.
EXIT_USAGE_ERROR = 2


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Turn a :class:`MetstrackError` into one red line on stderr and exit code 1."""
    try:
        yield
    except MetstrackError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_DATA_ERROR) from None


def usage_error(problem: object) -> NoReturn:
    """Print one red usage-error line (markup-escaped) on stderr and exit with code 2."""
    err_console.print(f"[bold red]usage error:[/] {escape(str(problem))}", soft_wrap=True)
    raise typer.Exit(EXIT_USAGE_ERROR)


def progress() -> Progress:
    """A Rich progress bar for long work (renders only on a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


#: Libraries whose failures metstrack catches and reports itself in one line; their
#: own log records (pydicom logs a decoder's traceback before raising) are shown
#: only with --verbose.
QUIET_LIBRARIES: tuple[str, ...] = ("pydicom", "highdicom")


def setup_logging(verbose: bool) -> None:
    """Route the library's log records to stderr through Rich."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
