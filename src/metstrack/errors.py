"""Exception hierarchy of metstrack.

Every error says what was expected, what was found, where (a file or folder),
and how to fix it. Patient-identifying DICOM values never appear in messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class MetstrackError(Exception):
    """Root of every error metstrack raises on purpose."""


class ImageReadError(MetstrackError):
    """An image file is missing, unreadable or corrupt (truncated gzip, bad header)."""


class InvalidImageError(MetstrackError):
    """An image was read but is unusable: wrong ndim, NaN/inf, bad affine, zero spacing."""


class GeometryMismatchError(MetstrackError):
    """Shapes or affines of images that must share a grid disagree beyond tolerance."""


class DicomSeriesError(MetstrackError):
    """A DICOM series is mixed, has missing slices, uneven spacing or no referenced series."""


class LabelError(MetstrackError):
    """A label is not what was required (non-binary, wrong dtype, probability map, empty)."""


class ConfigError(MetstrackError):
    """A configuration key or value is unknown or invalid."""


class DatasetError(MetstrackError):
    """A dataset's layout or tables are inconsistent (bad CSV row, unknown patient, bad split)."""


class CheckpointError(MetstrackError):
    """A checkpoint does not fit the requested architecture or cannot be read."""


class PacsError(MetstrackError):
    """A DICOMweb server is unreachable, refuses the request, or lacks what was asked for."""


class SurvivalDataError(MetstrackError):
    """Survival data cannot support the requested fit (no events, separation, bad times)."""


def did_you_mean(name: str, options: Iterable[str], *, sort: bool = True) -> str:
    """Return a hint listing the valid options and the closest match to ``name``.

    Args:
        name: The value the user gave.
        options: Every valid value.
        sort: List the options alphabetically (else in the order given, e.g. the
            declared order of a ``Literal`` type, default first).

    Returns:
        A sentence such as ``"valid: a, b, c; did you mean 'b'?"``.
    """
    opts = [str(o) for o in options]
    if sort:
        opts.sort()
    close = difflib.get_close_matches(str(name), opts, n=1, cutoff=0.5)
    hint = f"valid: {', '.join(opts)}"
    if close:
        hint += f"; did you mean {close[0]!r}?"
    return hint


def where(path: str | Path | None) -> str:
    """Format a path for an error message (``"<no file>"`` when absent)."""
    return "<no file>" if path is None else str(path)


class MissingExtraError(MetstrackError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to add."""
