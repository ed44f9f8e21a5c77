"""Export lesion masks back to DICOM: RTSTRUCT (one ROI per lesion) and SEG.

Both reference the source image series (its study, frame of reference and
SOP instances) so a treatment-planning system or PACS viewer shows them on the
scan they came from. The mask must lie on the series' own grid (the grid
:func:`metstrack.io.dicom_series.load_series` builds); map predictions back to the
native grid first.

RTSTRUCT contours are traced per slice with
:func:`skimage.measure.find_contours` at level 0.5 on the zero-padded slice:
each contour runs halfway between inside and outside voxel centres, so
rasterising it again (:func:`metstrack.io.rtstruct.rasterize_rtstruct`,
voxel centres inside the polygon, holes by the even-odd rule) recovers the
mask. SEG is written with highdicom as a BINARY segmentation with one segment
per lesion and read back exactly with :func:`read_seg`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage.measure import find_contours

from metstrack import __version__
from metstrack.core.atomic import atomic_path
from metstrack.core.extras import require
from metstrack.core.lesions import label_components
from metstrack.errors import DicomSeriesError, GeometryMismatchError, LabelError
from metstrack.io.dicom import DicomSeriesInfo, scan_dicom, uid_suffix
from metstrack.io.dicom_series import SeriesGeometry, series_geometry
from metstrack.types import Volume

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: Geometry tolerance between a mask and its source series (NIfTI stores float32 affines).
GRID_ATOL_MM = 1e-2
#: Module-level tags copied from the source series so viewers file the export with it.
_PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
)


_TYPE2_CONTEXT = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class PatientIdentity:
    """Patient and study identifiers written into exported objects instead of the source's.

    Used to pseudonymise an export: every attribute named here replaces the
    source's value; the other patient-identifying attributes
    (:data:`PSEUDONYMISED_BLANK`) are emptied. UIDs are kept, so the objects
    still reference their source images.

    Attributes:
        patient_id: PatientID and PatientName to write (e.g. the pseudonym ``"P0001"``).
        study_id: StudyID to write (e.g. ``"S00001"``; at most 16 characters).
    """

    patient_id: str
    study_id: str = ""

    def apply(self, ds: pydicom.Dataset) -> None:
        """Overwrite ``ds``'s identifiers in place."""
        ds.PatientID = self.patient_id
        ds.PatientName = f"{self.patient_id}^"  # one component, unambiguous
        ds.StudyID = self.study_id[:16]
        for key in PSEUDONYMISED_BLANK:
            if key in ds:
                setattr(ds, key, "")
        for key in PSEUDONYMISED_REMOVE:
            if key in ds:
                delattr(ds, key)


#: Type-2 attributes emptied when pseudonymising (they must stay present).
PSEUDONYMISED_BLANK = (
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "OperatorsName",
    "PerformingPhysicianName",
)
#: Optional identifying attributes removed when pseudonymising.
PSEUDONYMISED_REMOVE = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientBirthName",
    "PatientMotherBirthName",
    "InstitutionName",
    "InstitutionAddress",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
)


def fill_type2_context(ds: pydicom.Dataset) -> None:
    """Add the patient/study type-2 attributes a source lacks, empty (derived objects copy them)."""
    for key in _TYPE2_CONTEXT:
        if key not in ds:
            setattr(ds, key, "")


def lesion_instances(mask: np.ndarray, *, instance_map: bool = False) -> np.ndarray:
    """One positive ID per lesion.

    Args:
        mask: (X, Y, Z) integer mask. A binary mask is split into 26-connected
            components; a mask with values above 1 is taken as an instance map
            (each positive value one lesion).
        instance_map: Take every positive value as one lesion even when the
            mask holds only 0 and 1 (a tracked map whose only lesion is ID 1).

    Returns:
        int32 (X, Y, Z) instance map.

    Raises:
        LabelError: Negative or non-integer values.
    """
    arr = np.asarray(mask)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0):
        raise LabelError("mask holds non-integer values; threshold the probability map first")
    if arr.size and arr.min() < 0:
        raise LabelError("mask holds negative values")
    if arr.size and (arr.max() > 1 or instance_map):
        return arr.astype(np.int32)
    labels, _ = label_components(arr > 0, connectivity=26)
    return labels.astype(np.int32)


def _source_geometry(
    series: DicomSeriesInfo | str | Path, series_uid: str | None = None
) -> tuple[DicomSeriesInfo, SeriesGeometry]:
    if not isinstance(series, DicomSeriesInfo):
        images = scan_dicom(series).image_series
        if series_uid is not None:
            images = tuple(s for s in images if s.series_uid == series_uid)
            if not images:
                raise DicomSeriesError(
                    f"{series}: no image series {uid_suffix(series_uid)} under this folder"
                )
        if len(images) != 1:
            raise DicomSeriesError(
                f"{series}: expected exactly one image series, found {len(images)}; "
                "point --series at the folder of the source series or give --series-uid"
            )
        series = images[0]
    return series, series_geometry(series.instances, where=series.where)


def _check_grid(mask: Volume, info: DicomSeriesInfo, geo: SeriesGeometry) -> None:
    if mask.shape != geo.shape or not np.allclose(
        mask.affine, geo.affine, atol=GRID_ATOL_MM, rtol=0
    ):
        src = Volume(array=np.zeros((1, 1, 1)), affine=geo.affine)
        grid = src.describe_grid().replace("(1, 1, 1)", str(geo.shape))
        raise GeometryMismatchError(
            f"{mask.path or 'mask'} has {mask.describe_grid()}; the source series {info.where} "
            f"has {grid}; map the mask back to the series' native grid before exporting"
        )


def mask_contours(
    instances: np.ndarray, affine: np.ndarray, lesion_id: int
) -> list[tuple[int, np.ndarray]]:
    """Closed planar contours of one lesion, per slice (Z index), in LPS mm.

    Args:
        instances: int (X, Y, Z) instance map.
        affine: (4, 4) voxel-to-RAS affine.
        lesion_id: The lesion's value in ``instances``.

    Returns:
        ``[(k, points), ...]`` with ``points`` float64 (N, 3) LPS mm, not repeating the first point.
    """
    out = []
    sel = instances == lesion_id
    for k in np.flatnonzero(sel.any(axis=(0, 1))):
        sl = np.pad(sel[:, :, k].astype(np.float32), 1)
        for c in find_contours(sl, 0.5):
            c = c - 1.0
            if len(c) > 1 and np.allclose(c[0], c[-1]):
                c = c[:-1]
            if len(c) < 3:
                continue
            vox = np.column_stack([c[:, 0], c[:, 1], np.full(len(c), float(k)), np.ones(len(c))])
            ras = (affine @ vox.T).T[:, :3]
            out.append((int(k), ras * np.array([-1.0, -1.0, 1.0])))
    return out


def _copy_context(ds: pydicom.Dataset, ref: pydicom.Dataset) -> None:
    for key in _PATIENT_STUDY_TAGS:
        if key in ref:
            setattr(ds, key, ref.data_element(key).value)
        elif key in _TYPE2_CONTEXT:
            setattr(ds, key, "")


def write_rtstruct(
    mask: Volume,
    series: DicomSeriesInfo | str | Path,
    out: str | Path,
    *,
    roi_names: Sequence[str] | None = None,
    roi_type: str = "GTV",
    label: str = "metstrack",
    series_uid: str | None = None,
    identity: PatientIdentity | None = None,
    instance_map: bool = False,
    uids: tuple[str, str] | None = None,
) -> Path:
    """Write a lesion mask as an RTSTRUCT with one ROI per lesion.

    Args:
        mask: (X, Y, Z) binary or instance mask on the source series' grid.
        series: The source series (a scanned series or the folder holding it).
        out: The RTSTRUCT file to write (atomically).
        roi_names: One name per lesion (default ``"lesion_1"``...).
        roi_type: RTROIInterpretedType of every ROI.
        label: StructureSetLabel.
        series_uid: Pick this series when ``series`` is a folder holding several.
        identity: Write these identifiers instead of the source's (pseudonymised export).
        instance_map: Each positive value is one lesion (see :func:`lesion_instances`).
        uids: ``(SeriesInstanceUID, SOPInstanceUID)`` to use (default: new random UIDs).

    Returns:
        ``out``.

    Raises:
        GeometryMismatchError: The mask is not on the series' grid.
        LabelError: The mask holds no lesion, or ``roi_names`` has the wrong length.
    """
    info, geo = _source_geometry(series, series_uid)
    _check_grid(mask, info, geo)
    inst = lesion_instances(mask.array, instance_map=instance_map)
    ids = [int(v) for v in np.unique(inst) if v > 0]
    if not ids:
        raise LabelError(f"{mask.path or 'mask'}: holds no lesion; nothing to export")
    names = list(roi_names) if roi_names is not None else [f"lesion_{i}" for i in ids]
    if len(names) != len(ids):
        raise LabelError(f"{len(names)} ROI names given for {len(ids)} lesions")
    headers = _headers(geo)
    ref = headers[0]
    out = Path(out)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    series_uid_out, sop_uid = uids or (generate_uid(), generate_uid())
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    now = dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    _copy_context(ds, ref)
    if identity is not None:
        identity.apply(ds)
    frame_uid = str(ref.get("FrameOfReferenceUID", "")) or generate_uid()
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.OperatorsName = ""
    ds.SeriesInstanceUID = series_uid_out
    ds.SeriesNumber = 9901
    ds.SeriesDescription = f"{label} lesions"
    ds.InstanceNumber = 1
    ds.Manufacturer = "metstrack"
    ds.SoftwareVersions = __version__
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    images, seen = [], set()
    for h in headers:
        if h.SOPInstanceUID in seen:  # a multi-frame file is listed once
            continue
        seen.add(h.SOPInstanceUID)
        it = pydicom.Dataset()
        it.ReferencedSOPClassUID = h.SOPClassUID
        it.ReferencedSOPInstanceUID = h.SOPInstanceUID
        images.append(it)
    rser = pydicom.Dataset()
    rser.SeriesInstanceUID = info.series_uid
    rser.ContourImageSequence = DSequence(images)
    rstudy = pydicom.Dataset()
    rstudy.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
    rstudy.ReferencedSOPInstanceUID = info.study_uid
    rstudy.RTReferencedSeriesSequence = DSequence([rser])
    rfor = pydicom.Dataset()
    rfor.FrameOfReferenceUID = frame_uid
    rfor.RTReferencedStudySequence = DSequence([rstudy])
    ds.ReferencedFrameOfReferenceSequence = DSequence([rfor])
    ss_items, rc_items, obs_items = [], [], []
    palette = _palette(len(ids))
    for n, (lid, name) in enumerate(zip(ids, names, strict=True), start=1):
        roi = pydicom.Dataset()
        roi.ROINumber = n
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ss_items.append(roi)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber = n
        rc.ROIDisplayColor = palette[n - 1]
        contours = []
        for k, pts in mask_contours(inst, geo.affine, lid):
            c = pydicom.Dataset()
            img = pydicom.Dataset()
            img.ReferencedSOPClassUID = headers[k].SOPClassUID
            img.ReferencedSOPInstanceUID = headers[k].SOPInstanceUID
            if geo.instances[k].frame_index is not None:
                img.ReferencedFrameNumber = geo.instances[k].frame_index + 1
            c.ContourImageSequence = DSequence([img])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [round(float(v), 4) for v in pts.ravel()]
            contours.append(c)
        rc.ContourSequence = DSequence(contours)
        rc_items.append(rc)
        ob = pydicom.Dataset()
        ob.ObservationNumber = n
        ob.ReferencedROINumber = n
        ob.RTROIInterpretedType = roi_type
        ob.ROIInterpreter = ""
        obs_items.append(ob)
    ds.StructureSetROISequence = DSequence(ss_items)
    ds.ROIContourSequence = DSequence(rc_items)
    ds.RTROIObservationsSequence = DSequence(obs_items)
    with atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    log.info("wrote RTSTRUCT with %d ROI(s) for series %s", len(ids), uid_suffix(info.series_uid))
    return out


def _headers(geo: SeriesGeometry) -> list[pydicom.Dataset]:
    """Header of each slice's file in slice order (a multi-frame file read once)."""
    cache: dict[Path, pydicom.Dataset] = {}
    for i in geo.instances:
        if i.path not in cache:
            cache[i.path] = pydicom.dcmread(i.path, stop_before_pixels=True)
    return [cache[i.path] for i in geo.instances]


def _palette(n: int) -> list[list[int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [[int(round(255 * v)) for v in cmap(i % 10)[:3]] for i in range(n)]


def write_seg(
    mask: Volume,
    series: DicomSeriesInfo | str | Path,
    out: str | Path,
    *,
    segment_labels: Sequence[str] | None = None,
    series_uid: str | None = None,
    tracking_uids: Sequence[str] | None = None,
    identity: PatientIdentity | None = None,
    series_description: str = "metstrack lesions",
    instance_map: bool = False,
    uids: tuple[str, str] | None = None,
) -> Path:
    """Write a lesion mask as a DICOM SEG (highdicom, BINARY, one segment per lesion).

    Args:
        mask: (X, Y, Z) binary or instance mask on the source series' grid.
        series: The source series (a scanned series or its folder).
        out: The SEG file to write (atomically).
        segment_labels: One label per lesion (default ``"lesion_1"``...).
        series_uid: Pick this series when ``series`` is a folder holding several.
        tracking_uids: One TrackingUID per lesion (in increasing mask value order); each
            segment then carries its label as TrackingID and this UID as TrackingUID.
        identity: Write these identifiers instead of the source's (pseudonymised export).
        series_description: SeriesDescription of the SEG.
        instance_map: Each positive value is one lesion (see :func:`lesion_instances`).
        uids: ``(SeriesInstanceUID, SOPInstanceUID)`` to use (default: new random UIDs).

    Returns:
        ``out``.

    Raises:
        GeometryMismatchError: The mask is not on the series' grid.
        LabelError: No lesion, or wrong number of labels.
    """
    hd = require("highdicom", extra="seg", feature="DICOM SEG export")
    from pydicom.sr.codedict import codes

    info, geo = _source_geometry(series, series_uid)
    _check_grid(mask, info, geo)
    if any(i.frame_index is not None for i in geo.instances):
        raise DicomSeriesError(
            f"{info.where}: SEG export from a multi-frame (enhanced) source series is not "
            "supported; export an RTSTRUCT instead"
        )
    inst = lesion_instances(mask.array, instance_map=instance_map)
    ids = [int(v) for v in np.unique(inst) if v > 0]
    if not ids:
        raise LabelError(f"{mask.path or 'mask'}: holds no lesion; nothing to export")
    labels = list(segment_labels) if segment_labels is not None else [f"lesion_{i}" for i in ids]
    if len(labels) != len(ids):
        raise LabelError(f"{len(labels)} segment labels given for {len(ids)} lesions")
    if tracking_uids is not None and len(tracking_uids) != len(ids):
        raise LabelError(f"{len(tracking_uids)} tracking UIDs given for {len(ids)} lesions")
    relabel = np.zeros(int(inst.max()) + 1, dtype=np.uint16)
    relabel[ids] = np.arange(1, len(ids) + 1)
    frames = relabel[inst].transpose(2, 1, 0)  # (slices, rows, columns) in source order
    sources = [pydicom.dcmread(i.path) for i in geo.instances]
    for ds in sources:  # highdicom copies these type-2 attributes; empty when absent
        fill_type2_context(ds)
        if identity is not None:
            identity.apply(ds)
    algo = hd.AlgorithmIdentificationSequence(
        name="metstrack", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=lab[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Metastasis,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_id=lab[:64] if tracking_uids is not None else None,
            tracking_uid=tracking_uids[n - 1] if tracking_uids is not None else None,
        )
        for n, lab in enumerate(labels, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids[0] if uids else hd.UID(),
        series_number=9902,
        sop_instance_uid=uids[1] if uids else hd.UID(),
        instance_number=1,
        manufacturer="metstrack",
        manufacturer_model_name="metstrack",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description[:64],
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        seg.save_as(tmp)
    log.info("wrote SEG with %d segment(s) for series %s", len(ids), uid_suffix(info.series_uid))
    return out


def read_seg(
    path: str | Path, series: DicomSeriesInfo | str | Path, *, series_uid: str | None = None
) -> Volume:
    """Read a DICOM SEG back onto its source series' grid as an instance map.

    Args:
        path: The SEG file.
        series: The source series (a scanned series or its folder).
        series_uid: Pick this series when ``series`` is a folder holding several.

    Returns:
        uint16 (X, Y, Z) Volume; value n is segment number n, 0 background.

    Raises:
        DicomSeriesError: Unreadable, or it does not reference this series.
    """
    hd = require("highdicom", extra="seg", feature="DICOM SEG export")

    path = Path(path)
    info, geo = _source_geometry(series, series_uid)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise many types
        raise DicomSeriesError(f"{path}: not a readable DICOM SEG ({type(exc).__name__})") from exc
    uids = [i.sop_instance_uid for i in geo.instances]
    referenced = {u[2] for u in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise DicomSeriesError(
            f"{path}: references none of the images of series {uid_suffix(info.series_uid)}"
        )
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    return Volume(
        array=np.asarray(arr, dtype=np.uint16).transpose(2, 1, 0), affine=geo.affine, path=path
    )
