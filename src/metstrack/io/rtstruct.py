"""DICOM RTSTRUCT reading and rasterisation onto the referenced series' grid.

Each ROI's closed planar contours are mapped from DICOM LPS millimetres to RAS
(flip of the first two axes) and into voxel indices with the inverse of the
reference volume's affine. A contour must lie in one slice plane of the grid
(the voxel axis along which its points are constant within
:data:`PLANE_TOL_VOXELS`); it is then filled on that slice with
:func:`skimage.draw.polygon` (voxel centres inside the polygon). Several
contours of one ROI on one slice are combined by the even-odd rule (XOR), so a
contour drawn inside another is a hole. Contours off the grid or off the slice
planes are reported in :attr:`RoiMasks.problems`, never silently moved.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon as fill_polygon

from metstrack.errors import DicomSeriesError, LabelError
from metstrack.io.dicom import LPS_TO_RAS, uid_suffix
from metstrack.types import Volume

log = logging.getLogger(__name__)

#: A contour's points may stray this far (in voxels) from one slice plane.
PLANE_TOL_VOXELS = 0.1


@dataclass(frozen=True)
class RoiContours:
    """One ROI of a structure set.

    Attributes:
        number: ROINumber.
        name: ROIName.
        interpreted_type: RTROIInterpretedType (``"GTV"``, ``"PTV"``...; "" when absent).
        contours: Closed planar contours, each float64 (N, 3) points in LPS mm.
        skipped_contours: Contours that are not CLOSED_PLANAR (points, open lines).
    """

    number: int
    name: str
    interpreted_type: str
    contours: tuple[np.ndarray, ...] = field(repr=False)
    skipped_contours: int = 0


@dataclass(frozen=True)
class StructureSet:
    """An RTSTRUCT file's ROIs and references.

    Attributes:
        path: The file.
        referenced_series_uid: SeriesInstanceUID of the image series it was drawn on ("" if absent).
        referenced_sop_uids: SOPInstanceUIDs of the contoured images.
        frame_of_reference_uid: Referenced FrameOfReferenceUID ("" if absent).
        study_uid: StudyInstanceUID of the RTSTRUCT.
        rois: Every ROI in ROINumber order.
    """

    path: Path
    referenced_series_uid: str
    referenced_sop_uids: tuple[str, ...]
    frame_of_reference_uid: str
    study_uid: str
    rois: tuple[RoiContours, ...]

    def roi_names(self) -> tuple[str, ...]:
        """ROI names in order."""
        return tuple(r.name for r in self.rois)


@dataclass(frozen=True)
class RoiSelection:
    """Which ROIs become lesions (a TOML-loadable config section).

    An ROI is selected when its RTROIInterpretedType is in ``types`` or its name
    matches ``name_pattern``, and its name does not match ``exclude_pattern``.
    Empty ``types`` and ``name_pattern`` select every ROI.

    Attributes:
        types: RTROIInterpretedType values, case-insensitive (e.g. ``["GTV", "PTV"]``).
        name_pattern: Case-insensitive regular expression searched in ROIName ("" for none).
        exclude_pattern: Case-insensitive regular expression of names never selected.
    """

    types: tuple[str, ...] = ("GTV",)
    name_pattern: str = r"^(gtv|met|lesion|tumou?r)"
    exclude_pattern: str = r"^(body|external|skull|brain|brainstem|eye|lens|optic|chiasm)\b"

    def selects(self, roi: RoiContours) -> bool:
        """True when ``roi`` is selected."""
        if self.exclude_pattern and re.search(self.exclude_pattern, roi.name, re.IGNORECASE):
            return False
        if not self.types and not self.name_pattern:
            return True
        if roi.interpreted_type.upper() in {t.upper() for t in self.types}:
            return True
        return bool(self.name_pattern) and bool(
            re.search(self.name_pattern, roi.name, re.IGNORECASE)
        )


#: Selects every ROI.
ALL_ROIS = RoiSelection(types=(), name_pattern="", exclude_pattern="")


@dataclass(frozen=True)
class RoiRecord:
    """One row of the ROI table of a rasterisation.

    Attributes:
        instance_id: Value of this ROI in the instance mask (1-based).
        roi_number: ROINumber in the RTSTRUCT.
        name: ROIName.
        interpreted_type: RTROIInterpretedType.
        contours: Contours filled.
        voxel_count: Voxels of the ROI (before overlaps are resolved).
        volume_mm3: ``voxel_count`` times the voxel volume.
    """

    instance_id: int
    roi_number: int
    name: str
    interpreted_type: str
    contours: int
    voxel_count: int
    volume_mm3: float


@dataclass(frozen=True)
class RoiMasks:
    """Rasterised ROIs on a reference grid.

    Attributes:
        binary: uint8 (X, Y, Z) union of the selected ROIs, on the reference grid.
        instances: uint16 (X, Y, Z), one ID per ROI (``RoiRecord.instance_id``);
            where ROIs overlap the later ROI wins (reported in ``problems``).
        rois: The ROI table.
        problems: Messages about contours off the grid or off the slice planes,
            overlaps, and ROIs that came out empty.
    """

    binary: Volume
    instances: Volume
    rois: tuple[RoiRecord, ...]
    problems: tuple[str, ...] = ()


def read_rtstruct(path: str | Path) -> StructureSet:
    """Read an RTSTRUCT file's ROIs and references.

    Args:
        path: The RTSTRUCT file.

    Returns:
        A :class:`StructureSet`; contour points in LPS mm.

    Raises:
        DicomSeriesError: Not readable, not an RTSTRUCT, or malformed contour data.
    """
    path = Path(path)
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)  # a bare dataset without preamble
            if "SOPClassUID" not in ds:
                raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on foreign files
        raise DicomSeriesError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise DicomSeriesError(
            f"{path}: expected an RTSTRUCT, found modality {ds.get('Modality', '?')!r}"
        )
    series_uid, sops, frame_uid = "", [], ""
    for rfor in ds.get("ReferencedFrameOfReferenceSequence", []):
        frame_uid = frame_uid or str(rfor.get("FrameOfReferenceUID", ""))
        for rstudy in rfor.get("RTReferencedStudySequence", []):
            for rser in rstudy.get("RTReferencedSeriesSequence", []):
                series_uid = series_uid or str(rser.get("SeriesInstanceUID", ""))
                sops += [
                    str(c.ReferencedSOPInstanceUID) for c in rser.get("ContourImageSequence", [])
                ]
    names = {
        int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])
    }
    types = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
        for o in ds.get("RTROIObservationsSequence", [])
    }
    rois = []
    for rc in ds.get("ROIContourSequence", []):
        num = int(rc.ReferencedROINumber)
        contours, skipped = [], 0
        for c in rc.get("ContourSequence", []):
            kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            data = np.asarray(c.get("ContourData", []), dtype=np.float64)
            if kind != "CLOSED_PLANAR" or data.size < 9:
                skipped += 1
                continue
            if data.size % 3:
                raise DicomSeriesError(
                    f"{path}: ROI {num} has ContourData whose length {data.size} is not a "
                    "multiple of 3; the file is corrupt"
                )
            contours.append(data.reshape(-1, 3))
        rois.append(
            RoiContours(
                number=num,
                name=names.get(num, f"ROI {num}"),
                interpreted_type=types.get(num, ""),
                contours=tuple(contours),
                skipped_contours=skipped,
            )
        )
    rois.sort(key=lambda r: r.number)
    return StructureSet(
        path=path,
        referenced_series_uid=series_uid,
        referenced_sop_uids=tuple(sops),
        frame_of_reference_uid=frame_uid,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        rois=tuple(rois),
    )


def _contour_mask(
    pts_lps: np.ndarray, inv_affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[int, int, np.ndarray, bool] | str:
    """Fill one contour; return (axis, slice, 2D mask, clipped) or a problem description."""
    ras = pts_lps * np.array([-1.0, -1.0, 1.0])
    vox = (inv_affine[:3, :3] @ ras.T).T + inv_affine[:3, 3]
    spread = vox.max(axis=0) - vox.min(axis=0)
    axis = int(np.argmin(spread))
    if spread[axis] > 2 * PLANE_TOL_VOXELS:
        return f"lies off the slice planes (spread {spread[axis]:.2f} voxels across every axis)"
    level = float(np.mean(vox[:, axis]))
    k = int(round(level))
    if abs(level - k) > PLANE_TOL_VOXELS:
        return f"lies between slices (index {level:.2f} along axis {axis})"
    if not 0 <= k < shape[axis]:
        return f"lies off the grid (slice {k} along axis {axis}, grid has {shape[axis]})"
    plane = [a for a in range(3) if a != axis]
    r, c = vox[:, plane[0]], vox[:, plane[1]]
    shp = (shape[plane[0]], shape[plane[1]])
    rr, cc = fill_polygon(r, c, shape=shp)
    m = np.zeros(shp, dtype=bool)
    m[rr, cc] = True
    lo, eps = -0.5 - 1e-3, 1e-3  # a contour along the grid's outer edge is inside
    inside = (r >= lo) & (r <= shp[0] - 0.5 + eps) & (c >= lo) & (c <= shp[1] - 0.5 + eps)
    if not inside.any() and not m.any():
        return f"lies off the grid in-plane (slice {k})"
    return axis, k, m, bool(not inside.all())


def rasterize_rtstruct(
    structure_set: StructureSet,
    reference: Volume,
    *,
    selection: RoiSelection = ALL_ROIS,
) -> RoiMasks:
    """Rasterise the selected ROIs of ``structure_set`` on ``reference``'s grid.

    Args:
        structure_set: From :func:`read_rtstruct`.
        reference: The referenced image volume (its grid: shape (X, Y, Z) and RAS affine).
        selection: Which ROIs to keep (default: all).

    Returns:
        A :class:`RoiMasks` with a binary and an instance mask on the reference grid.

    Raises:
        LabelError: No ROI matches ``selection`` (the message lists the ROIs found).
    """
    chosen = [r for r in structure_set.rois if selection.selects(r)]
    where = f"{structure_set.path}"
    if not chosen:
        listed = ", ".join(
            f"{r.name!r} ({r.interpreted_type or 'no type'})" for r in structure_set.rois
        )
        raise LabelError(
            f"{where}: no ROI matches the selection (types {list(selection.types)}, "
            f"name pattern {selection.name_pattern!r}); ROIs present: {listed or 'none'}"
        )
    shape = reference.shape
    inv = np.linalg.inv(np.asarray(reference.affine, dtype=np.float64))
    instances = np.zeros(shape, dtype=np.uint16)
    problems: list[str] = []
    records = []
    vox_mm3 = reference.voxel_volume_mm3
    for iid, roi in enumerate(chosen, start=1):
        roi_mask = np.zeros(shape, dtype=bool)
        filled = 0
        if roi.skipped_contours:
            problems.append(
                f"{where}: ROI {roi.name!r}: {roi.skipped_contours} contour(s) are not "
                "CLOSED_PLANAR and were ignored"
            )
        for ci, pts in enumerate(roi.contours):
            res = _contour_mask(pts, inv, shape)
            if isinstance(res, str):
                problems.append(f"{where}: ROI {roi.name!r} contour {ci + 1} {res}")
                continue
            axis, k, m2, clipped = res
            if clipped:
                problems.append(
                    f"{where}: ROI {roi.name!r} contour {ci + 1} extends beyond the grid "
                    f"(slice {k}); clipped at the grid's edge"
                )
            sl: list[slice | int] = [slice(None)] * 3
            sl[axis] = k
            roi_mask[tuple(sl)] ^= m2  # even-odd across contours of one slice: holes
            filled += 1
        n = int(roi_mask.sum())
        if n == 0:
            problems.append(f"{where}: ROI {roi.name!r} covers no voxel of the reference grid")
        overlap = int((roi_mask & (instances > 0)).sum())
        if overlap:
            problems.append(
                f"{where}: ROI {roi.name!r} overlaps earlier ROIs in {overlap} voxel(s); "
                "the instance mask keeps the later ROI there"
            )
        instances[roi_mask] = iid
        records.append(
            RoiRecord(
                instance_id=iid,
                roi_number=roi.number,
                name=roi.name,
                interpreted_type=roi.interpreted_type,
                contours=filled,
                voxel_count=n,
                volume_mm3=n * vox_mm3,
            )
        )
    for p in problems:
        log.warning(p)
    aff = np.asarray(reference.affine, dtype=np.float64)
    return RoiMasks(
        binary=Volume(array=(instances > 0).astype(np.uint8), affine=aff, path=structure_set.path),
        instances=Volume(array=instances, affine=aff, path=structure_set.path),
        rois=tuple(records),
        problems=tuple(problems),
    )


def check_reference(structure_set: StructureSet, series_uid: str, sop_uids: set[str]) -> None:
    """Raise :class:`DicomSeriesError` unless the RTSTRUCT references this series.

    Args:
        structure_set: The RTSTRUCT.
        series_uid: SeriesInstanceUID of the candidate image series.
        sop_uids: Its SOPInstanceUIDs.
    """
    if structure_set.referenced_series_uid and structure_set.referenced_series_uid != series_uid:
        raise DicomSeriesError(
            f"{structure_set.path}: references series "
            f"{uid_suffix(structure_set.referenced_series_uid)}, not {uid_suffix(series_uid)}"
        )
    missing = set(structure_set.referenced_sop_uids) - sop_uids
    if missing:
        raise DicomSeriesError(
            f"{structure_set.path}: {len(missing)} referenced image(s) are absent from series "
            f"{uid_suffix(series_uid)}; the series on disk is incomplete"
        )


__all__ = [
    "ALL_ROIS",
    "LPS_TO_RAS",
    "RoiContours",
    "RoiMasks",
    "RoiRecord",
    "RoiSelection",
    "StructureSet",
    "check_reference",
    "rasterize_rtstruct",
    "read_rtstruct",
]
