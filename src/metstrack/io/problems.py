"""Problems found in a dataset: one record per finding, shared by the readers and validate.

The dataset readers are lenient: they record what is inconsistent (a table
flag without its file, a missing modality) as :class:`Problem` records instead
of stopping, and :mod:`metstrack.io.validate` collects them with its own checks
into one report. Messages never contain patient-identifying values (names,
birth dates, DICOM tags); they name files, columns and release IDs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
