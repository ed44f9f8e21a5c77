"""``metstrack catalog``: list the catalog's tables and export them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, usage_error
from metstrack.errors import DatasetError

ACTIONS = ("list", "export")


def catalog(
    db: Annotated[Path, typer.Argument(help="The catalog file (SQLite).")],
    action: Annotated[str, typer.Argument(help="list | export")] = "list",
    table: Annotated[str | None, typer.Argument(help="Table to export.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Export file.")] = None,
    format: Annotated[str, typer.Option("--format", help="csv | parquet")] = "csv",
) -> None:
    """List the cohort catalog's tables with row counts, or export one to CSV/Parquet."""
    from metstrack.catalog import Catalog

    if action not in ACTIONS:
        usage_error(f"unknown action {action!r}; use list or export")
    if action == "export" and (table is None or out is None):
        usage_error("export needs a TABLE and --out FILE")
    with guarded():
        if not db.is_file():
            raise DatasetError(f"{db}: catalog file not found; check the path")
        with Catalog.open(db) as cat:
            if action == "list":
                t = Table(title=f"{db.name} (schema v{cat.schema_version})")
                t.add_column("table")
                t.add_column("rows", justify="right")
                for name, n in cat.counts().items():
                    t.add_row(name, str(n))
                console.print(t)
            else:
                path = cat.export(table, out, format=format)
                console.print(f"wrote {table} to {path}")
