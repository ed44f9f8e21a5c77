"""Typed cells of the release tables: every bad cell a table error naming file, line and column.

The release reader (:mod:`metstrack.io.release`, :mod:`metstrack.io.release_clinical`)
reads each CSV as strings (:func:`load_csv`), parses rows with :func:`parse_rows`
and the ``*_cell`` parsers, and collects what it finds in :class:`Findings`.
A cell that may hold identifying free text is described, never quoted back
(:func:`shown_value`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from metstrack.errors import did_you_mean
from metstrack.io.problems import (
    ERROR,
    Problem,
)
from metstrack.types import Study

TRUE_WORDS = {"1", "1.0", "true", "yes"}
FALSE_WORDS = {"0", "0.0", "false", "no"}


@dataclass
class Findings:
    """Accumulates table errors and recorded problems."""

    table: list[Problem] = field(default_factory=list)
    recorded: list[Problem] = field(default_factory=list)
    # IDs on imaging-table rows that failed to parse: later tables naming them
    # are not reported again as "unknown" (one root cause, one message).
    failed_studies: set[str] = field(default_factory=set)
    failed_patients: set[str] = field(default_factory=set)

    def table_error(self, file: Path, message: str, check: str = "table") -> None:
        self.table.append(Problem(ERROR, file, check, message))

    def record(self, severity: str, file: Path | None, check: str, message: str) -> None:
        self.recorded.append(Problem(severity, file, check, message))


class AlreadyReportedError(Exception):
    """A row that refers to an imaging row already reported as bad."""


class BadCellError(Exception):
    """A cell that does not parse; carries the column and the reason."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def load_csv(path: Path, required: Sequence[str], found: Findings) -> pd.DataFrame | None:
    """Read a CSV as strings with ``line`` = 1-based line of each row; None when unusable."""
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        found.table_error(path, f"cannot parse the CSV ({msg}); fix the file's format")
        return None
    except OSError as exc:
        found.table_error(path, f"cannot read the file ({exc.strerror or exc})")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = did_you_mean(missing[0], [c for c in df.columns if c not in required])
        found.table_error(
            path,
            f"missing required column(s) {', '.join(missing)}; "
            f"found columns {', '.join(df.columns)}; {hint}",
        )
        return None
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    df["__line__"] = df.index + 2  # header is line 1
    blank = (df.drop(columns="__line__") == "").all(axis=1)
    return df[~blank]


def cell_value(row: pd.Series, column: str) -> str:
    """The cell as text; an empty or NaN cell is ``""``."""
    v = row.get(column, "")
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


#: Placeholder words safe to quote back in messages.
SAFE_WORDS = {"nan", "inf", "-inf", "na", "n/a", "none", "null", "true", "false", "yes", "no"}


def shown_value(value: str) -> str:
    """Quote a bad cell only when it cannot be identifying text (no letters, or a placeholder).

    Free text (a name typed into a number column) is described, never repeated.
    """
    v = value.strip()
    if v.lower() in SAFE_WORDS or not any(ch.isalpha() for ch in v):
        return repr(v if len(v) <= 24 else v[:21] + "...")
    return f"text of {len(v)} character(s) (not shown)"


def text_cell(row: pd.Series, column: str) -> str:
    """A required text cell.

    Raises:
        BadCellError: The cell is empty.
    """
    v = cell_value(row, column)
    if not v:
        raise BadCellError(column, "empty value; every row needs one")
    return v


def optional_number_cell(row: pd.Series, column: str) -> float:
    """A number, or NaN for an empty cell (documented optional columns only)."""
    return math.nan if not cell_value(row, column) else number_cell(row, column)


def number_cell(row: pd.Series, column: str, *, lo: float | None = None, hi: float | None = None):
    """A finite number, optionally within ``[lo, hi]``.

    Raises:
        BadCellError: Not a number, not finite, or out of range.
    """
    v = cell_value(row, column)
    try:
        x = float(v)
    except ValueError:
        raise BadCellError(column, f"expected a number, found {shown_value(v)}") from None
    if not math.isfinite(x):
        raise BadCellError(column, f"expected a finite number, found {shown_value(v)}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise BadCellError(column, f"value {x:g} is outside the valid range {rng}")
    return x


def integer_cell(row: pd.Series, column: str, *, lo: int | None = None) -> int:
    """An integer, optionally at least ``lo``.

    Raises:
        BadCellError: Not an integer.
    """
    x = number_cell(row, column, lo=lo)
    if x != int(x):
        raise BadCellError(column, f"expected an integer, found {cell_value(row, column)!r}")
    return int(x)


def flag_cell(row: pd.Series, column: str) -> bool:
    """A 0/1 flag (``1``, ``true``, ``yes`` / ``0``, ``false``, ``no``).

    Raises:
        BadCellError: Anything else.
    """
    v = cell_value(row, column).lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise BadCellError(column, f"expected 0 or 1, found {shown_value(cell_value(row, column))}")


def parse_rows(
    path: Path,
    df: pd.DataFrame,
    parse: Callable[[pd.Series], object],
    found: Findings,
    *,
    check: str = "table",
    on_fail: Callable[[pd.Series], None] | None = None,
) -> list[tuple[int, object]]:
    """Apply ``parse`` to every row; bad cells become table errors naming line and column."""
    out = []
    for _, row in df.iterrows():
        line = int(row["__line__"])
        try:
            out.append((line, parse(row)))
        except AlreadyReportedError:
            continue
        except BadCellError as bad:
            found.table_error(path, f"line {line}, column {bad.column!r}: {bad.reason}", check)
            if on_fail is not None:
                on_fail(row)
    return out


@dataclass(frozen=True)
class ImagingRow:
    """A parsed imaging-table row and where it came from."""

    study: Study
    line: int
    flags: dict[str, bool]
