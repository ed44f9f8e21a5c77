"""Helpers shared by the CLI command modules: consoles, error handling, progress."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

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

from metstrack.errors import ConfigError, MetstrackError

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


#: ``--executor``: where the units of work run (docs/scale.md).
ExecutorOption = Annotated[
    str,
    typer.Option(
        "--executor",
        help="local: this machine's processes (--workers); dask: a Dask cluster, the one at "
        "--scheduler or a local one of --workers processes (docs/scale.md).",
    ),
]
#: ``--scheduler``: a running Dask scheduler.
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Address of a running Dask scheduler (tcp://HOST:8786); with --executor dask.",
    ),
]
#: ``--task-memory``: memory one unit of work needs, a Dask worker resource.
TaskMemoryOption = Annotated[
    float | None,
    typer.Option(
        "--task-memory",
        help="GiB one patient needs (Dask worker resource MEMORY_GIB); with --executor dask.",
    ),
]


@contextlib.contextmanager
def executor_from_options(
    kind: str, workers: int, scheduler: str | None, task_memory_gib: float | None
) -> Iterator[Any]:
    """The executor of ``--executor`` (``None`` for ``local``: the workflow's own pool).

    Bad combinations are usage errors (exit 2); an unreachable scheduler is one
    line and exit 1 when used inside :func:`guarded`, before any work starts.
    """
    from metstrack.execution.executor import ExecutorOptions, open_executor

    try:
        opts = ExecutorOptions(
            kind=kind, workers=workers, scheduler=scheduler, task_memory_gib=task_memory_gib
        )
    except ConfigError as exc:
        usage_error(exc)
    if opts.kind == "local":
        yield None
        return
    with open_executor(opts) as executor:
        yield executor
