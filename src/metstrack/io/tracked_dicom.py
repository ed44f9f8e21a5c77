"""Tracked lesions as DICOM: a Comprehensive 3D SR (TID 1500) per study, and reading back.

The SR of one study (written with :mod:`highdicom.sr`) holds, under the
"Imaging Measurements" container of a TID 1500 Measurement Report:

- per lesion present in the study, a **TID 1411 volumetric group**: its
  TrackingID (``"L3"``) and TrackingUID, a reference to its segment in the
  study's SEG (SOP instance + segment number, with the source series), the
  finding type (SCT Metastasis), the volume (SCT 118565006 "Volume", UCUM
  ``mm3``, method DCM 126030 "Sum of segmented voxel method for volume") and
  the lesion status as a qualitative evaluation;
- per lesion present, a **TID 1501 group** with the same TrackingID/UID
  holding the bidimensional measurement: SCT 103339001 "Long axis" and SCT
  103340004 "Short axis" (mm), each inferred from a SCOORD3D POLYLINE of its
  two end points in the frame of reference of the source series (highdicom
  does not allow coordinates inside a TID 1411 group, hence the second group);
- per lesion tracked earlier but absent now (resolved), a TID 1501 group with
  the same identity, a volume of 0 mm3 and the status ``resolved``;
- per follow-up study, two TID 1501 groups for the study-level response:
  "RANO-BM" (method RANO, CID 6147) with the sum of the target diameters now,
  at baseline and at the nadir, the change from baseline (%) and from the
  nadir (mm) and the category; and "RANO-BM volumetric" with the same on the
  summed target volume.

Where DICOM has no code, metstrack uses its private coding scheme
:data:`SCHEME` (``99MTRK``; "99" marks a private scheme in PS3.16) and lists
the codes here (:data:`STATUS_CODES`, :data:`RESPONSE_NUMERICS`).

:func:`read_tracked_sr` walks the content tree with plain pydicom (not with
the highdicom classes that wrote it), so the round-trip test checks the
object, not the writer's own bookkeeping.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from metstrack import __version__
from metstrack.core.atomic import atomic_path
from metstrack.core.extras import require
from metstrack.errors import DicomSeriesError
from metstrack.io.dicom import uid_suffix
from metstrack.io.export import PatientIdentity, fill_type2_context
from metstrack.tracking.identity import derived_uid, lesion_id_of

hd = require("highdicom", extra="seg", feature="DICOM SR and SEG export")

log = logging.getLogger(__name__)

#: metstrack's private coding scheme designator.
SCHEME = "99MTRK"
STATUS_CONCEPT = Code("LSTAT", SCHEME, "Lesion status")
#: Lesion status -> code (SNOMED where one exists).
STATUS_CODES: dict[str, Code] = {
    "new": Code("129721008", "SCT", "New finding"),
    "stable": Code("129723006", "SCT", "No significant changes in the finding"),
    "growing": Code("GROW", SCHEME, "Growing"),
    "shrinking": Code("SHRINK", SCHEME, "Shrinking"),
    "resolved": Code("RESOLVED", SCHEME, "Resolved"),
    "reappeared": Code("REAPPEAR", SCHEME, "Reappeared"),
}
RESPONSE_CONCEPT = codes.DCM.CurrentResponse
#: RANO-BM category -> code (DCM response codes of CID 6144).
RESPONSE_CODES: dict[str, Code] = {
    "CR": codes.DCM.TargetLesionCompleteResponse,
    "PR": codes.DCM.TargetLesionPartialResponse,
    "SD": codes.DCM.TargetLesionStableDisease,
    "PD": codes.DCM.TargetLesionProgressiveDisease,
}
VOLUMETRIC_METHOD = Code("RANOBMVOL", SCHEME, "RANO-BM volumetric analogue")
MM = codes.UCUM.Millimeter
MM3 = codes.UCUM.CubicMillimeter
PERCENT = codes.UCUM.Percent
#: Study-level numeric -> (code, unit); keys are ``response.csv`` columns.
RESPONSE_NUMERICS: dict[str, tuple[Code, Code]] = {
    "sum_diameters_mm": (Code("SOD", SCHEME, "Sum of target longest diameters"), MM),
    "baseline_sum_diameters_mm": (Code("SODBL", SCHEME, "Baseline sum of diameters"), MM),
    "nadir_sum_diameters_mm": (Code("SODNADIR", SCHEME, "Nadir sum of diameters"), MM),
    "change_from_baseline_percent": (Code("CHGBL", SCHEME, "Change from baseline"), PERCENT),
    "change_from_nadir_mm": (Code("CHGNADIR", SCHEME, "Change from nadir"), MM),
    "target_volume_mm3": (Code("TVOL", SCHEME, "Sum of target volumes"), MM3),
    "baseline_target_volume_mm3": (Code("TVOLBL", SCHEME, "Baseline sum of volumes"), MM3),
    "nadir_target_volume_mm3": (Code("TVOLNADIR", SCHEME, "Nadir sum of volumes"), MM3),
    "volume_change_from_baseline_percent": (
        Code("VCHGBL", SCHEME, "Volume change from baseline"),
        PERCENT,
    ),
    "volume_change_from_nadir_mm3": (Code("VCHGNADIR", SCHEME, "Volume change from nadir"), MM3),
}
_DIAMETER_KEYS = (
    "sum_diameters_mm",
    "baseline_sum_diameters_mm",
    "nadir_sum_diameters_mm",
    "change_from_baseline_percent",
    "change_from_nadir_mm",
)
_VOLUME_KEYS = (
    "target_volume_mm3",
    "baseline_target_volume_mm3",
    "nadir_target_volume_mm3",
    "volume_change_from_baseline_percent",
    "volume_change_from_nadir_mm3",
)
RANO_GROUP = "RANO-BM"
VOLUMETRIC_GROUP = "RANO-BM volumetric"
_VOLUME = codes.SCT.Volume
_LONG = codes.SCT.LongAxis
_SHORT = codes.SCT.ShortAxis
LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class LesionEntry:
    """One tracked lesion in one study, as the SEG and SR carry it.

    Attributes:
        lesion_id: Persistent lesion ID of the tracking run.
        tracking_id: Readable TrackingID (``"L3"``).
        tracking_uid: TrackingUID, the same in every study of the patient.
        status: ``new``, ``stable``, ``growing``, ``shrinking``, ``resolved`` or ``reappeared``.
        volume_mm3: Volume on the source series (0 when absent).
        long_axis_mm: Longest in-plane diameter on the source series (0 when absent).
        short_axis_mm: Longest diameter perpendicular to it (0 when absent).
        long_axis_lps_mm: float64 (2, 3) end points in DICOM patient coordinates (LPS), or None.
        short_axis_lps_mm: float64 (2, 3) end points (LPS), or None.
        segment_number: Its segment in the study's SEG (None when absent).
    """

    lesion_id: int
    tracking_id: str
    tracking_uid: str
    status: str
    volume_mm3: float
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0
    long_axis_lps_mm: np.ndarray | None = None
    short_axis_lps_mm: np.ndarray | None = None
    segment_number: int | None = None

    @property
    def present(self) -> bool:
        """Whether the lesion has a segment in this study."""
        return self.segment_number is not None


@dataclass(frozen=True)
class StudyResponse:
    """Study-level response of one follow-up (from ``response.csv``).

    Attributes:
        rano_bm: RANO-BM category (CR, PR, SD, PD).
        volumetric: Volumetric category (CR, PR, SD, PD).
        values: Numerics keyed as :data:`RESPONSE_NUMERICS` (NaN ones are left out).
    """

    rano_bm: str
    volumetric: str
    values: dict[str, float]


@dataclass(frozen=True)
class TrackedReport:
    """What :func:`read_tracked_sr` finds in an SR.

    Attributes:
        sop_instance_uid: The SR's SOPInstanceUID.
        study_uid: Its StudyInstanceUID.
        lesions: One entry per lesion (segment references resolved to numbers).
        seg_sop_uid: SOPInstanceUID of the referenced SEG ("" when none).
        response: The study-level response (None for a baseline study).
    """

    sop_instance_uid: str
    study_uid: str
    lesions: tuple[LesionEntry, ...]
    seg_sop_uid: str
    response: StudyResponse | None


def _lps_polyline(points_lps: np.ndarray, frame_uid: str):
    return hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
        graphic_data=np.asarray(points_lps, dtype=np.float64).reshape(2, 3),
        frame_of_reference_uid=frame_uid,
    )


def _lesion_groups(les: LesionEntry, seg: pydicom.Dataset | None, frame_uid: str, algo) -> list:
    tid = hd.sr.TrackingIdentifier(uid=les.tracking_uid, identifier=les.tracking_id)
    status = hd.sr.QualitativeEvaluation(STATUS_CONCEPT, STATUS_CODES[les.status])
    volume = hd.sr.Measurement(
        name=_VOLUME,
        value=float(les.volume_mm3),
        unit=MM3,
        method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
        algorithm_id=algo,
    )
    if not les.present or seg is None:
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid,
                finding_type=codes.SCT.Metastasis,
                finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
                measurements=[volume],
                qualitative_evaluations=[status],
            )
        ]
    groups = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tid,
            # built by hand: highdicom's from_segmentation() looks for per-frame segment
            # identification, which a single-segment SEG keeps in the shared groups
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=int(les.segment_number),
                source_series=hd.sr.SourceSeriesForSegmentation(
                    str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
                ),
            ),
            finding_type=codes.SCT.Metastasis,
            finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
            measurements=[volume],
            qualitative_evaluations=[status],
        )
    ]
    axes = []
    for name, value, pts in (
        (_LONG, les.long_axis_mm, les.long_axis_lps_mm),
        (_SHORT, les.short_axis_mm, les.short_axis_lps_mm),
    ):
        coords = [_lps_polyline(pts, frame_uid)] if pts is not None else None
        axes.append(
            hd.sr.Measurement(
                name=name,
                value=float(value),
                unit=MM,
                algorithm_id=algo,
                referenced_coordinates=coords,
            )
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=les.tracking_uid, identifier=les.tracking_id
            ),
            finding_type=codes.SCT.Metastasis,
            method=codes.cid6147.RANO,
            measurements=axes,
        )
    )
    return groups


def _response_groups(resp: StudyResponse, anchor_uid: str, algo) -> list:
    out = []
    for label, method, keys, category in (
        (RANO_GROUP, codes.cid6147.RANO, _DIAMETER_KEYS, resp.rano_bm),
        (VOLUMETRIC_GROUP, VOLUMETRIC_METHOD, _VOLUME_KEYS, resp.volumetric),
    ):
        ms = []
        for key in keys:
            value = resp.values.get(key, math.nan)
            if not math.isfinite(value):
                continue  # e.g. a change from a zero baseline is undefined
            code, unit = RESPONSE_NUMERICS[key]
            ms.append(hd.sr.Measurement(name=code, value=float(value), unit=unit))
        quals = []
        if category in RESPONSE_CODES:
            quals.append(hd.sr.QualitativeEvaluation(RESPONSE_CONCEPT, RESPONSE_CODES[category]))
        uid = derived_uid("metstrack-response", anchor_uid, label)
        out.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=label),
                method=method,
                algorithm_id=algo,
                measurements=ms or None,
                qualitative_evaluations=quals or None,
            )
        )
    return out


def write_tracked_sr(
    out: str | Path,
    *,
    source_headers: Sequence[pydicom.Dataset],
    seg_path: str | Path | None,
    lesions: Sequence[LesionEntry],
    response: StudyResponse | None,
    response_anchor: str,
    identity: PatientIdentity | None = None,
    uids: tuple[str, str] | None = None,
) -> Path:
    """Write one study's TID 1500 Measurement Report as a Comprehensive 3D SR.

    Args:
        out: The SR file to write (atomically).
        source_headers: Headers of the source series' instances (slice order).
        seg_path: The study's SEG (None when no lesion is present in the study).
        lesions: Every tracked lesion of the study, present or resolved.
        response: Study-level response (None for the baseline study).
        response_anchor: Seeds the response groups' TrackingUIDs (the patient's anchor
            plus the study), so a re-export gives the same UIDs.
        identity: Write these identifiers instead of the source's.
        uids: ``(SeriesInstanceUID, SOPInstanceUID)`` to use (default: new random UIDs).

    Returns:
        ``out``.
    """
    headers = [copy.deepcopy(ds) for ds in source_headers]
    for ds in headers:  # the SR copies its patient and study modules from these
        fill_type2_context(ds)
        if identity is not None:
            identity.apply(ds)
    seg = pydicom.dcmread(seg_path) if seg_path is not None else None
    if seg is not None and identity is not None:
        identity.apply(seg)
    frame_uid = str(headers[0].FrameOfReferenceUID)
    algo = hd.sr.AlgorithmIdentification(name="metstrack", version=__version__)
    groups = []
    for les in lesions:
        groups += _lesion_groups(les, seg, frame_uid, algo)
    if response is not None:
        groups += _response_groups(response, response_anchor, algo)
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("metstrack-device-observer"),
            name="metstrack",
            manufacturer_name="metstrack",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.MRIUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    evidence = [*([seg] if seg is not None else []), *headers]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids[0] if uids else hd.UID(),
        series_number=9903,
        sop_instance_uid=uids[1] if uids else hd.UID(),
        instance_number=1,
        manufacturer="metstrack",
        is_complete=True,
        series_description="metstrack tracked lesions",
    )
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "metstrack codes"
    scheme.CodingSchemeResponsibleOrganization = "metstrack"
    sr.CodingSchemeIdentificationSequence = pydicom.Sequence([scheme])
    out = Path(out)
    with atomic_path(out) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    log.info(
        "wrote SR with %d lesion(s) for study %s", len(lesions), uid_suffix(sr.StudyInstanceUID)
    )
    return out


# ---- reading back (plain pydicom walk of the content tree) -----------------------------


def _concept(item: pydicom.Dataset) -> tuple[str, str]:
    c = item.ConceptNameCodeSequence[0]
    return str(c.CodingSchemeDesignator), str(c.CodeValue)


def _key(code: Code) -> tuple[str, str]:
    return str(code.scheme_designator), str(code.value)


_STATUS_BY_CODE = {_key(c): s for s, c in STATUS_CODES.items()}
_RESPONSE_BY_CODE = {_key(c): s for s, c in RESPONSE_CODES.items()}
_NUMERIC_BY_CODE = {_key(c): k for k, (c, _) in RESPONSE_NUMERICS.items()}


def _num(item: pydicom.Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _scoord(item: pydicom.Dataset) -> np.ndarray | None:
    for child in item.get("ContentSequence", []):
        if child.ValueType == "SCOORD3D":
            return np.asarray(child.GraphicData, dtype=np.float64).reshape(-1, 3)
    return None


def _walk(items) -> list[pydicom.Dataset]:
    out = []
    for it in items:
        out.append(it)
        out += _walk(it.get("ContentSequence", []))
    return out


def read_tracked_sr(path: str | Path) -> TrackedReport:
    """Read a metstrack SR back: lesions (identity, measurements, status) and response.

    Args:
        path: A Comprehensive 3D SR written by :func:`write_tracked_sr`.

    Returns:
        A :class:`TrackedReport`; the two groups of one lesion are merged by TrackingUID.

    Raises:
        DicomSeriesError: Unreadable, or not a TID 1500 report.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types
        raise DicomSeriesError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    tmpl = ds.get("ContentTemplateSequence")
    if ds.get("ValueType") != "CONTAINER" or not tmpl or str(tmpl[0].TemplateIdentifier) != "1500":
        raise DicomSeriesError(f"{path}: not a TID 1500 Measurement Report")
    groups = [
        it
        for it in _walk(ds.ContentSequence)
        if it.ValueType == "CONTAINER" and _concept(it) == ("DCM", "125007")
    ]
    by_uid: dict[str, dict] = {}
    order: list[str] = []
    seg_uid = ""
    response_parts: dict[str, dict] = {}
    for g in groups:
        rec: dict = {"num": {}, "coords": {}, "codes": {}, "segment": None, "tid": "", "uid": ""}
        for it in g.get("ContentSequence", []):
            concept = _concept(it)
            if concept == ("DCM", "112039"):
                rec["tid"] = str(it.TextValue)
            elif concept == ("DCM", "112040"):
                rec["uid"] = str(it.UID)
            elif it.ValueType == "NUM":
                rec["num"][concept] = _num(it)
                rec["coords"][concept] = _scoord(it)
            elif it.ValueType == "CODE":
                c = it.ConceptCodeSequence[0]
                rec["codes"][concept] = (str(c.CodingSchemeDesignator), str(c.CodeValue))
            elif it.ValueType == "IMAGE" and concept == _key(codes.DCM.ReferencedSegment):
                ref = it.ReferencedSOPSequence[0]
                rec["segment"] = int(ref.ReferencedSegmentNumber)
                seg_uid = str(ref.ReferencedSOPInstanceUID)
        if rec["tid"] in (RANO_GROUP, VOLUMETRIC_GROUP):
            response_parts[rec["tid"]] = rec
            continue
        if rec["uid"] not in by_uid:
            by_uid[rec["uid"]] = {
                "tid": rec["tid"],
                "num": {},
                "coords": {},
                "codes": {},
                "segment": None,
            }
            order.append(rec["uid"])
        merged = by_uid[rec["uid"]]
        merged["num"].update(rec["num"])
        merged["coords"].update({k: v for k, v in rec["coords"].items() if v is not None})
        merged["codes"].update(rec["codes"])
        if rec["segment"] is not None:
            merged["segment"] = rec["segment"]
    lesions = []
    for uid in order:
        m = by_uid[uid]
        status_code = m["codes"].get(_key(STATUS_CONCEPT))
        lesions.append(
            LesionEntry(
                lesion_id=lesion_id_of(m["tid"]),
                tracking_id=m["tid"],
                tracking_uid=uid,
                status=_STATUS_BY_CODE.get(status_code, "") if status_code else "",
                volume_mm3=m["num"].get(_key(_VOLUME), math.nan),
                long_axis_mm=m["num"].get(_key(_LONG), 0.0),
                short_axis_mm=m["num"].get(_key(_SHORT), 0.0),
                long_axis_lps_mm=m["coords"].get(_key(_LONG)),
                short_axis_lps_mm=m["coords"].get(_key(_SHORT)),
                segment_number=m["segment"],
            )
        )
    response = None
    if response_parts:
        values: dict[str, float] = {}
        cats = {}
        for label, rec in response_parts.items():
            for concept, v in rec["num"].items():
                if concept in _NUMERIC_BY_CODE:
                    values[_NUMERIC_BY_CODE[concept]] = v
            code = rec["codes"].get(_key(RESPONSE_CONCEPT))
            cats[label] = _RESPONSE_BY_CODE.get(code, "") if code else ""
        response = StudyResponse(
            rano_bm=cats.get(RANO_GROUP, ""),
            volumetric=cats.get(VOLUMETRIC_GROUP, ""),
            values=values,
        )
    return TrackedReport(
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        lesions=tuple(lesions),
        seg_sop_uid=seg_uid,
        response=response,
    )


@dataclass(frozen=True)
class SegSegment:
    """One segment of a SEG as read back.

    Attributes:
        segment_number: SegmentNumber.
        label: SegmentLabel.
        tracking_id: TrackingID ("" when absent).
        tracking_uid: TrackingUID ("" when absent).
    """

    segment_number: int
    label: str
    tracking_id: str
    tracking_uid: str


def read_seg_segments(path: str | Path) -> tuple[SegSegment, ...]:
    """The segments of a DICOM SEG with their tracking identity (headers only).

    Raises:
        DicomSeriesError: Unreadable or not a SEG.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise DicomSeriesError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    if "SegmentSequence" not in ds:
        raise DicomSeriesError(f"{path}: not a DICOM SEG (no SegmentSequence)")
    return tuple(
        SegSegment(
            segment_number=int(s.SegmentNumber),
            label=str(s.get("SegmentLabel", "")),
            tracking_id=str(s.get("TrackingID", "")),
            tracking_uid=str(s.get("TrackingUID", "")),
        )
        for s in ds.SegmentSequence
    )
