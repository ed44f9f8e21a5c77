"""DICOM series discovery and volume building with pydicom.

A folder tree is scanned header-only (``stop_before_pixels``); files are
grouped by SeriesInstanceUID; a series' slices are sorted along the slice
normal (the cross product of the two ImageOrientationPatient directions) and
checked for consistent orientation and size, uniform spacing and missing
slices before the volume is built.

Geometry: DICOM world coordinates are LPS; metstrack's are RAS, so the
voxel-to-world affine is ``diag(-1, -1, 1, 1) @ affine_lps``. The array is
indexed (X, Y, Z) = (column, row, slice) with slices in ascending order along
the normal, so the affine's columns are the row direction times the column
spacing, the column direction times the row spacing, and the step between
consecutive slice positions.

Privacy: messages and logs name folders and SeriesInstanceUID suffixes only,
never patient-identifying values (name, ID, birth date, accession number).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from metstrack.errors import DicomSeriesError

log = logging.getLogger(__name__)

#: LPS (DICOM) to RAS (metstrack) world flip.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Modalities holding structure sets or segmentations rather than images.
RTSTRUCT_MODALITY = "RTSTRUCT"
SEG_MODALITY = "SEG"


def uid_suffix(uid: str, n: int = 8) -> str:
    """Last ``n`` characters of a UID, prefixed with ``...`` (safe for messages)."""
    return f"...{uid[-n:]}" if len(uid) > n else uid


@dataclass(frozen=True)
class DicomInstance:
    """Header fields of one image instance needed for geometry (no pixel data).

    Attributes:
        path: The file.
        sop_instance_uid: SOPInstanceUID.
        sop_class_uid: SOPClassUID.
        instance_number: InstanceNumber (0 when absent).
        position_lps: ImagePositionPatient, mm, LPS; ``None`` when absent.
        orientation: ImageOrientationPatient (row then column cosines); ``None`` when absent.
        pixel_spacing_mm: PixelSpacing as (row spacing, column spacing) in mm; ``None`` when absent.
        rows: Rows (pixels along Y).
        columns: Columns (pixels along X).
        frames: NumberOfFrames of the file (1 for single-frame images).
        frame_index: 0-based frame of a multi-frame (enhanced) file, ``None`` for
            single-frame files.
        rescale: (slope, intercept) of an enhanced file's frame; ``None`` means
            read RescaleSlope/RescaleIntercept from the file's top level.
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int
    position_lps: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing_mm: tuple[float, float] | None
    rows: int
    columns: int
    frames: int = 1
    frame_index: int | None = None
    rescale: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """File name, with the frame number for a frame of a multi-frame file."""
        return (
            self.path.name
            if self.frame_index is None
            else f"{self.path.name}[frame {self.frame_index + 1}]"
        )


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found on disk (headers only).

    Identifying values needed to group studies into patients are kept in
    fields excluded from ``repr`` and must never be logged.

    Attributes:
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        modality: Modality tag (``"MR"``, ``"CT"``, ``"RTSTRUCT"``, ``"SEG"``...).
        folders: Folders holding its files (sorted).
        instances: Its image instances (unsorted; geometry is checked on load).
        files: Every file of the series (for RTSTRUCT/SEG the object files).
        series_number: SeriesNumber (0 when absent).
        series_description: SeriesDescription ("" when absent).
        protocol_name: ProtocolName.
        sequence_name: SequenceName.
        contrast_agent: ContrastBolusAgent (free text, "" when absent).
        image_type: ImageType values joined by backslashes.
        frame_of_reference_uid: FrameOfReferenceUID ("" when absent).
        study_date: StudyDate (YYYYMMDD) or SeriesDate/AcquisitionDate fallback; private.
        patient_key: PatientID (private; never log it).
    """

    series_uid: str
    study_uid: str
    modality: str
    folders: tuple[Path, ...]
    instances: tuple[DicomInstance, ...] = ()
    files: tuple[Path, ...] = ()
    series_number: int = 0
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    contrast_agent: str = ""
    image_type: str = ""
    frame_of_reference_uid: str = ""
    study_date: str = field(default="", repr=False)
    patient_key: str = field(default="", repr=False)

    @property
    def where(self) -> str:
        """Folder(s) and UID suffix for messages, e.g. ``"/x/ser3 (series ...12345678)"``."""
        folders = ", ".join(str(f) for f in self.folders[:3])
        if len(self.folders) > 3:
            folders += f" (+{len(self.folders) - 3} more folders)"
        return f"{folders} (series {uid_suffix(self.series_uid)})"

    @property
    def is_image(self) -> bool:
        """True when the series holds images with the geometry tags a volume needs."""
        return bool(self.instances) and self.modality not in (RTSTRUCT_MODALITY, SEG_MODALITY)


@dataclass(frozen=True)
class DicomScan:
    """The result of scanning a folder tree.

    Attributes:
        root: The scanned folder.
        series: Every series found, sorted by study UID, series number, series UID.
        skipped: One message per folder naming what was skipped and why.
        notes: One message per folder holding several series (grouped by UID).
    """

    root: Path
    series: tuple[DicomSeriesInfo, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def image_series(self) -> tuple[DicomSeriesInfo, ...]:
        """Series that can be built into volumes."""
        return tuple(s for s in self.series if s.is_image)

    @property
    def structure_sets(self) -> tuple[DicomSeriesInfo, ...]:
        """RTSTRUCT series."""
        return tuple(s for s in self.series if s.modality == RTSTRUCT_MODALITY)

    def find(self, series_uid: str) -> DicomSeriesInfo | None:
        """The series with ``series_uid``, or ``None``."""
        for s in self.series:
            if s.series_uid == series_uid:
                return s
        return None


def _str(ds: pydicom.Dataset, key: str) -> str:
    v = ds.get(key, "")
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _floats(ds: pydicom.Dataset, key: str, n: int) -> tuple[float, ...] | None:
    v = ds.get(key)
    if v is None:
        return None
    try:
        vals = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _int(ds: pydicom.Dataset, key: str, default: int = 0) -> int:
    try:
        v = ds.get(key)
        return default if v in (None, "") else int(v)
    except (TypeError, ValueError):
        return default


def _candidate_files(root: Path) -> Iterable[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            yield p


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Header of a DICOM file (Part 10, or a raw dataset without preamble), else ``None``."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass  # older exports write bare datasets without the 'DICM' preamble
    except Exception:  # noqa: BLE001 - pydicom raises many types on foreign files
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" in ds and "SeriesInstanceUID" in ds:
            return ds
    except Exception:  # noqa: BLE001
        pass
    return None


def ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Give a bare dataset (no file meta) the uncompressed transfer syntax it was read with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    implicit, little = ds.original_encoding
    meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian
        if implicit
        else (pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
    )


def scan_dicom(root: str | Path) -> DicomScan:
    """Find every DICOM series under ``root``, reading headers only.

    Non-DICOM files, DICOMDIR files and DICOM objects that are neither images
    nor RTSTRUCT/SEG (reports, presentation states, plans) are skipped with one
    warning per folder. A folder holding several series is reported with a
    warning and its files are grouped by SeriesInstanceUID.

    Args:
        root: A folder (any depth of patient/study/series subfolders) or one file.

    Returns:
        A :class:`DicomScan`.

    Raises:
        DicomSeriesError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise DicomSeriesError(f"{root}: folder not found")
    files = [root] if root.is_file() else list(_candidate_files(root))
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    skipped: dict[Path, list[str]] = defaultdict(list)
    for path in files:
        ds = _read_header(path)
        if ds is None:
            skipped[path.parent].append(f"{path.name} (not DICOM)")
            continue
        if "DirectoryRecordSequence" in ds:
            skipped[path.parent].append(f"{path.name} (DICOMDIR)")
            continue
        uid = _str(ds, "SeriesInstanceUID")
        modality = _str(ds, "Modality").upper()
        if not uid:
            skipped[path.parent].append(f"{path.name} (no SeriesInstanceUID)")
            continue
        has_geometry = "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds
        if modality not in (RTSTRUCT_MODALITY, SEG_MODALITY) and not (
            "Rows" in ds and has_geometry
        ):
            skipped[path.parent].append(f"{path.name} (non-image {modality or 'object'})")
            continue
        by_series[uid].append((path, ds))
    messages = []
    for folder, items in sorted(skipped.items()):
        shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
        msg = f"{folder}: skipped {len(items)} file(s): {shown}"
        log.warning(msg)
        messages.append(msg)
    series = [_series_info(uid, items) for uid, items in by_series.items()]
    series.sort(key=lambda s: (s.study_uid, s.series_number, s.series_uid))
    per_folder: dict[Path, list[str]] = defaultdict(list)
    for s in series:
        for f in s.folders:
            per_folder[f].append(s.series_uid)
    notes = []
    for folder, uids in sorted(per_folder.items()):
        if len(uids) > 1:
            msg = (
                f"{folder}: mixed series in one folder ({len(uids)} series: "
                f"{', '.join(uid_suffix(u) for u in uids)}); files grouped by SeriesInstanceUID"
            )
            log.warning(msg)
            notes.append(msg)
    return DicomScan(root=root, series=tuple(series), skipped=tuple(messages), notes=tuple(notes))


def _series_info(uid: str, items: list[tuple[Path, pydicom.Dataset]]) -> DicomSeriesInfo:
    ds0 = items[0][1]
    modality = _str(ds0, "Modality").upper()
    instances = ()
    if modality not in (RTSTRUCT_MODALITY, SEG_MODALITY):
        instances = tuple(i for p, ds in items for i in _instances(p, ds))
    date = _str(ds0, "StudyDate") or _str(ds0, "SeriesDate") or _str(ds0, "AcquisitionDate")
    agent = ""
    for _, ds in items:
        agent = _str(ds, "ContrastBolusAgent")
        if agent:
            break
    return DicomSeriesInfo(
        series_uid=uid,
        study_uid=_str(ds0, "StudyInstanceUID"),
        modality=modality,
        folders=tuple(sorted({p.parent for p, _ in items})),
        instances=instances,
        files=tuple(sorted(p for p, _ in items)),
        series_number=_int(ds0, "SeriesNumber"),
        series_description=_str(ds0, "SeriesDescription"),
        protocol_name=_str(ds0, "ProtocolName"),
        sequence_name=_str(ds0, "SequenceName"),
        contrast_agent=agent,
        image_type=_str(ds0, "ImageType"),
        frame_of_reference_uid=_str(ds0, "FrameOfReferenceUID"),
        study_date=date,
        patient_key=_str(ds0, "PatientID"),
    )


def _instances(path: Path, ds: pydicom.Dataset) -> list[DicomInstance]:
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(path, ds)
    ps = _floats(ds, "PixelSpacing", 2)
    return [
        DicomInstance(
            path=path,
            sop_instance_uid=_str(ds, "SOPInstanceUID"),
            sop_class_uid=_str(ds, "SOPClassUID"),
            instance_number=_int(ds, "InstanceNumber"),
            position_lps=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
            orientation=_floats(ds, "ImageOrientationPatient", 6),
            pixel_spacing_mm=ps,  # type: ignore[arg-type]
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            frames=_int(ds, "NumberOfFrames", 1),
        )
    ]


def _group(per_frame: pydicom.Dataset, shared: pydicom.Dataset | None, key: str):
    """First item of functional group ``key``, per-frame before shared."""
    for src in (per_frame, shared):
        if src is not None and key in src and len(src[key].value):
            return src[key].value[0]
    return None


def _enhanced_frames(path: Path, ds: pydicom.Dataset) -> list[DicomInstance]:
    """One pseudo-instance per frame of an enhanced (multi-frame) image."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    out = []
    n = _int(ds, "NumberOfFrames", 1)
    for i, pf in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = _group(pf, shared, "PlanePositionSequence")
        ori = _group(pf, shared, "PlaneOrientationSequence")
        meas = _group(pf, shared, "PixelMeasuresSequence")
        trans = _group(pf, shared, "PixelValueTransformationSequence")
        rescale = None
        if trans is not None:
            rescale = (
                float(trans.get("RescaleSlope", 1.0) or 1.0),
                float(trans.get("RescaleIntercept", 0.0) or 0.0),
            )
        out.append(
            DicomInstance(
                path=path,
                sop_instance_uid=_str(ds, "SOPInstanceUID"),
                sop_class_uid=_str(ds, "SOPClassUID"),
                instance_number=_int(ds, "InstanceNumber"),
                position_lps=None if pos is None else _floats(pos, "ImagePositionPatient", 3),  # type: ignore[arg-type]
                orientation=None if ori is None else _floats(ori, "ImageOrientationPatient", 6),
                pixel_spacing_mm=None if meas is None else _floats(meas, "PixelSpacing", 2),  # type: ignore[arg-type]
                rows=_int(ds, "Rows"),
                columns=_int(ds, "Columns"),
                frames=n,
                frame_index=i,
                rescale=rescale or (1.0, 0.0),
            )
        )
    return out
