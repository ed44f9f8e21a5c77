"""Problems found in a dataset: one record per finding, shared by the readers and validate.

The dataset readers are lenient: they record what is inconsistent (a table
flag without its file, a missing modality) as :class:`Problem` records instead
of stopping, and :mod:`metstrack.io.validate` collects them with its own checks
into one report. Messages never contain patient-identifying values (names,
birth dates, DICOM tags); they name files, columns and release IDs only.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from metstrack.errors import DatasetError
from metstrack.types import Cohort

log = logging.getLogger(__name__)

#: Severity of a problem that makes the dataset unusable as it is.
ERROR = "error"
#: Severity of a problem worth knowing that does not stop use of the dataset.
WARNING = "warning"
SEVERITIES: tuple[str, ...] = (ERROR, WARNING)


@dataclass(frozen=True)
class Problem:
    """One finding about a dataset.

    Attributes:
        severity: ``"error"`` or ``"warning"``.
        file: The file or folder concerned (``None`` for the dataset as a whole).
        check: Short name of the check that found it (e.g. ``"readable"``,
            ``"geometry"``, ``"label-binary"``, ``"table-vs-files"``, ``"split"``).
        message: What was expected, what was found and how to fix it.
    """

    severity: str
    file: Path | None
    check: str
    message: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def is_error(self) -> bool:
        """True for severity ``"error"``."""
        return self.severity == ERROR


@dataclass(frozen=True)
class DatasetScan:
    """What a lenient dataset scan found (every layout reader has a ``scan_*`` function).

    Attributes:
        cohort: The cohort built from every usable entry, or ``None`` when the
            dataset's index (e.g. the imaging table) is unusable.
        table_errors: Problems that make the dataset's tables or naming
            untrustworthy; the matching ``read_*`` function raises on them.
        problems: Recorded table-versus-files problems (errors and warnings)
            that the reader tolerates unless asked to be strict.
    """

    cohort: Cohort | None
    table_errors: tuple[Problem, ...]
    problems: tuple[Problem, ...]

    @property
    def all_problems(self) -> tuple[Problem, ...]:
        """Table errors followed by recorded problems."""
        return self.table_errors + self.problems


def dataset_error(problems: Sequence[Problem], root: str | Path) -> DatasetError:
    """A DatasetError quoting the first problem (file first) and counting the others."""
    first = problems[0]
    msg = f"{first.file}: {first.message}" if first.file is not None else first.message
    if len(problems) > 1:
        msg += (
            f" (and {len(problems) - 1} more problem(s); "
            f"`metstrack validate {root}` lists them all)"
        )
    return DatasetError(msg)


def cohort_or_raise(
    scan: DatasetScan,
    root: str | Path,
    *,
    strict: bool,
    strict_checks: Collection[str] | None = None,
) -> Cohort:
    """Turn a scan into a cohort the way every ``read_*`` function does.

    Args:
        scan: The layout's scan.
        root: Dataset folder (for messages).
        strict: Also raise on recorded problems.
        strict_checks: With ``strict``, the checks that raise; ``None`` means
            every recorded problem of severity error.

    Returns:
        ``scan.cohort``.

    Raises:
        DatasetError: Any table error, or (strict) a recorded problem.
    """
    if scan.table_errors:
        raise dataset_error(scan.table_errors, root)
    if scan.cohort is None:  # pragma: no cover - scans give a cohort when no table error
        raise DatasetError(f"{root}: no dataset could be read")
    if strict:
        if strict_checks is None:
            bad = [p for p in scan.problems if p.is_error]
        else:
            bad = [p for p in scan.problems if p.check in strict_checks]
        if bad:
            raise dataset_error(bad, root)
    for p in scan.problems:
        log.log(logging.WARNING if p.is_error else logging.INFO, "%s: %s", p.file, p.message)
    if scan.problems:
        n_err = sum(p.is_error for p in scan.problems)
        log.log(
            logging.WARNING if n_err else logging.INFO,
            "%s: read with %d recorded problem(s) (%d error(s)); run `metstrack validate %s`",
            root,
            len(scan.problems),
            n_err,
            root,
        )
    return scan.cohort
