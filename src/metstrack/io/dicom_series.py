"""One DICOM image series as a volume: slice geometry checked, pixels read, LPS to RAS.

:func:`series_geometry` orders a series' slices and checks them (one
orientation, even spacing, no missing slice, within :data:`SPACING_RTOL`);
:func:`load_series` reads the pixels into a RAS :class:`~metstrack.types.Volume`.
Finding the series in a folder is :mod:`metstrack.io.dicom`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from metstrack.errors import DicomSeriesError
from metstrack.io.dicom import (
    LPS_TO_RAS,
    DicomInstance,
    DicomSeriesInfo,
    ensure_transfer_syntax,
    scan_dicom,
    uid_suffix,
)
from metstrack.types import Volume

log = logging.getLogger(__name__)

#: Orientation cosines may differ by this much between slices of one series.
ORIENTATION_ATOL = 1e-4
#: Relative tolerance on the step between consecutive slices.
SPACING_RTOL = 0.02
#: A gap larger than this multiple of the typical step is a missing slice.
MISSING_SLICE_FACTOR = 1.5


@dataclass(frozen=True)
class SeriesGeometry:
    """A checked slice order and the resulting grid.

    Attributes:
        instances: Instances sorted by position along the slice normal.
        affine: float64 (4, 4) voxel (X=column, Y=row, Z=slice) to RAS mm.
        shape: (columns, rows, slices).
        slice_step_mm: Distance between consecutive slices along the normal.
    """

    instances: tuple[DicomInstance, ...]
    affine: np.ndarray
    shape: tuple[int, int, int]
    slice_step_mm: float


def series_geometry(
    instances: Sequence[DicomInstance],
    *,
    where: str = "series",
    spacing_rtol: float = SPACING_RTOL,
) -> SeriesGeometry:
    """Sort slices along the normal, check them, and compute the RAS affine.

    Args:
        instances: Image instances of one series in any order.
        where: Folder / series description for messages.
        spacing_rtol: Allowed relative deviation of each slice step from the median.

    Returns:
        A :class:`SeriesGeometry`.

    Raises:
        DicomSeriesError: Missing geometry tags, multi-frame images, differing
            orientation or size, duplicate positions, a missing slice, uneven spacing.
    """
    if not instances:
        raise DicomSeriesError(f"{where}: no image instances")
    for inst in instances:
        if inst.frames > 1 and inst.frame_index is None:
            raise DicomSeriesError(
                f"{where}: {inst.path.name} is a multi-frame image without per-frame "
                "geometry; convert it to single-frame images first (e.g. dcm2niix)"
            )
        if inst.position_lps is None or inst.orientation is None or inst.pixel_spacing_mm is None:
            raise DicomSeriesError(
                f"{where}: {inst.name} lacks ImagePositionPatient, ImageOrientationPatient "
                "or PixelSpacing; cannot place the slice in space"
            )
    first = instances[0]
    iop = np.asarray(first.orientation, dtype=np.float64)
    for inst in instances[1:]:
        if not np.allclose(inst.orientation, iop, atol=ORIENTATION_ATOL, rtol=0):
            raise DicomSeriesError(
                f"{where}: slices have different orientations ({first.name} vs "
                f"{inst.name}); mixed series (e.g. a localizer) in one series UID - "
                "separate them before ingest"
            )
        if (inst.rows, inst.columns) != (first.rows, first.columns) or not np.allclose(
            inst.pixel_spacing_mm, first.pixel_spacing_mm, atol=1e-4
        ):
            raise DicomSeriesError(
                f"{where}: slices differ in size or pixel spacing ({first.name}: "
                f"{first.rows}x{first.columns}, {inst.name}: {inst.rows}x{inst.columns}); "
                "mixed series in one series UID"
            )
    row_dir = iop[:3] / np.linalg.norm(iop[:3])
    col_dir = iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    pos = np.array([inst.position_lps for inst in instances], dtype=np.float64)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    pos = pos[order]
    sorted_inst = tuple(instances[i] for i in order)
    row_mm, col_mm = first.pixel_spacing_mm  # spacing between rows, between columns
    n = len(sorted_inst)
    if n > 1:
        steps = np.diff(dist)
        if np.any(steps < 1e-3):
            k = int(np.argmin(steps))
            raise DicomSeriesError(
                f"{where}: {sorted_inst[k].name} and {sorted_inst[k + 1].name} lie at "
                f"the same position ({dist[k]:.2f} mm along the normal); duplicate slices or "
                "several acquisitions (echoes, phases) in one series - split them before ingest"
            )
        step = float(np.median(steps))
        gaps = np.flatnonzero(steps > MISSING_SLICE_FACTOR * step)
        if gaps.size:
            k = int(gaps[0])
            missing = round(steps[k] / step) - 1
            raise DicomSeriesError(
                f"{where}: missing slice(s): a gap of {steps[k]:.2f} mm between "
                f"{sorted_inst[k].name} and {sorted_inst[k + 1].name} where the step "
                f"is {step:.2f} mm (about {missing} slice(s) absent); re-export the complete series"
            )
        dev = np.abs(steps - step)
        if np.any(dev > spacing_rtol * step + 1e-3):
            k = int(np.argmax(dev))
            raise DicomSeriesError(
                f"{where}: uneven slice spacing: steps range "
                f"{steps.min():.3f}..{steps.max():.3f} mm "
                f"(first deviation after {sorted_inst[k].name}); resample the series to a "
                "uniform spacing before ingest"
            )
        step_vec = (pos[-1] - pos[0]) / (n - 1)
        tilt = np.degrees(np.arccos(min(1.0, abs(step_vec @ normal) / np.linalg.norm(step_vec))))
        if tilt > 0.1:  # gantry tilt: the affine keeps the true (sheared) slice positions
            log.warning(
                "%s: slices are offset in-plane (gantry tilt of %.1f deg); the affine is sheared",
                where,
                tilt,
            )
    else:
        step = 1.0
        step_vec = normal * step
    aff_lps = np.eye(4)
    aff_lps[:3, 0] = row_dir * col_mm
    aff_lps[:3, 1] = col_dir * row_mm
    aff_lps[:3, 2] = step_vec
    aff_lps[:3, 3] = pos[0]
    return SeriesGeometry(
        instances=sorted_inst,
        affine=LPS_TO_RAS @ aff_lps,
        shape=(first.columns, first.rows, n),
        slice_step_mm=float(np.linalg.norm(step_vec)),
    )


def load_series(
    info: DicomSeriesInfo, *, spacing_rtol: float = SPACING_RTOL, dtype: type = np.float32
) -> Volume:
    """Build the volume of an image series, applying RescaleSlope/RescaleIntercept.

    Args:
        info: A series from :func:`scan_dicom`.
        spacing_rtol: Allowed relative deviation of slice steps.
        dtype: dtype of the returned array.

    Returns:
        A :class:`~metstrack.types.Volume`: array (X=column, Y=row, Z=slice),
        RAS affine in mm; ``path`` is the series' first folder.

    Raises:
        DicomSeriesError: The series is not an image series or fails a geometry check.
    """
    if not info.is_image:
        raise DicomSeriesError(f"{info.where}: a {info.modality} series holds no image volume")
    geo = series_geometry(info.instances, where=info.where, spacing_rtol=spacing_rtol)
    nx, ny, nz = geo.shape
    out = np.empty((nx, ny, nz), dtype=dtype, order="F")  # slices contiguous; NIfTI is F-order
    cache: dict[Path, tuple[pydicom.Dataset, np.ndarray]] = {}  # one decode per multi-frame file
    for k, inst in enumerate(geo.instances):
        if inst.path not in cache:
            try:
                ds = pydicom.dcmread(inst.path, force=True)
                ensure_transfer_syntax(ds)
                pixels = ds.pixel_array
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixels
                raise DicomSeriesError(
                    f"{info.where}: cannot decode pixel data of {inst.name} "
                    f"({_one_line_reason(exc)}); the file is corrupt or uses an unsupported "
                    "compression"
                ) from exc
            if inst.frame_index is None:
                cache.clear()
            cache[inst.path] = (ds, pixels)
        ds, pixels = cache[inst.path]
        pix = (
            pixels
            if inst.frame_index is None
            else pixels.reshape(-1, *pixels.shape[-2:])[inst.frame_index]
        )
        if pix.shape != (ny, nx):
            raise DicomSeriesError(
                f"{info.where}: {inst.name} pixel data has shape {pix.shape}, "
                f"expected {(ny, nx)} (rows, columns)"
            )
        if inst.rescale is not None:
            slope, intercept = inst.rescale
        else:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        out[:, :, k] = (pix.astype(np.float64) * slope + intercept).T
    return Volume(array=out, affine=geo.affine, path=info.folders[0])


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read the one image series in ``folder`` (or the one with ``series_uid``).

    Args:
        folder: A folder holding one series (subfolders are searched too).
        series_uid: Pick this series when the folder holds several.

    Returns:
        The series volume (see :func:`load_series`).

    Raises:
        DicomSeriesError: No image series, several series and no ``series_uid``,
            or a geometry check failed.
    """
    scan = scan_dicom(folder)
    images = scan.image_series
    if series_uid is not None:
        images = tuple(s for s in images if s.series_uid == series_uid)
        if not images:
            raise DicomSeriesError(f"{folder}: no image series {uid_suffix(series_uid)}")
    if not images:
        raise DicomSeriesError(f"{folder}: no DICOM image series found")
    if len(images) > 1:
        listed = ", ".join(
            f"{uid_suffix(s.series_uid)} ({s.series_description or 'no description'})"
            for s in images[:5]
        )
        raise DicomSeriesError(
            f"{folder}: mixed series in one folder ({len(images)} series: {listed}); "
            "pass the series UID to pick one, or separate them"
        )
    return load_series(images[0])


def _one_line_reason(exc: BaseException) -> str:
    """A decoder's failure in one short line (pydicom lists every plugin's error)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = "; ".join(lines[1:] if len(lines) > 1 else lines) or type(exc).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."
