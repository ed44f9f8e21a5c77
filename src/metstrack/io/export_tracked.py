"""From a tracking run back to DICOM: per study a SEG + SR (+ RTSTRUCT) on the source series.

``export_tracked(tracking, dicom, mapping, out)`` reads a ``metstrack track``
output folder (tracked maps, ``trajectories.csv``, ``response.csv``), the
private pseudonym mapping of ``metstrack ingest`` (which study and series each
pseudonym came from) and the source DICOM export, and writes::

    <out>/<P>/<S>/SEG.dcm        one segment per lesion present (TrackingID + TrackingUID)
    <out>/<P>/<S>/SR.dcm         TID 1500 report: every tracked lesion + study response
    <out>/<P>/<S>/RTSTRUCT.dcm   with ``rtstruct=True``: one ROI per lesion, named by TrackingID
    <out>/lesions.csv            one row per lesion and study: what the SEG/SR carry
    <out>/export_config.json     inputs, settings, version

Geometry: the tracked maps lie on each patient's tracking (baseline) grid. A
study whose source series has that grid takes the map as it is; otherwise the
map is resampled onto the series' grid with nearest neighbour through the
study's ``baseline_to_study`` transform (the ``--transforms`` the tracking run
used, read from its ``track_config.json``). Measurements (volume, long and
short axis) are made on the source series' grid, on exactly the voxels the
SEG holds, so reading the SEG back reproduces them; where the tracking grid is
the series' grid they also equal ``trajectories.csv``'s volumes.

Identifiers: by default the objects carry the source's patient and study
identifiers, so the PACS files them with the images they were made from.
With ``pseudonymise=True`` PatientID/PatientName/StudyID become the ingest
mapping's pseudonyms (``P0001``, ``S00001``) and birth date, sex, accession
number and referring physician are emptied; UIDs are kept (the objects must
still reference their source images).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from metstrack import __version__
from metstrack.core.atomic import write_csv_atomic, write_json_atomic
from metstrack.core.grid import Grid
from metstrack.core.mapping import map_to_native
from metstrack.errors import DatasetError, DicomSeriesError, GeometryMismatchError, did_you_mean
from metstrack.io.dicom import DicomScan, DicomSeriesInfo, scan_dicom, uid_suffix
from metstrack.io.dicom_series import series_geometry
from metstrack.io.export import GRID_ATOL_MM, PatientIdentity, write_rtstruct, write_seg
from metstrack.io.nifti import read_label
from metstrack.io.pseudonyms import read_mapping
from metstrack.io.tracked_dicom import LPS_FROM_RAS, LesionEntry, StudyResponse, write_tracked_sr
from metstrack.io.tracks import read_transforms, tracked_map_path
from metstrack.metrics.bidimensional import bidimensional_mm
from metstrack.tracking.identity import derived_uid, tracking_id, tracking_uid
from metstrack.types import Volume

log = logging.getLogger(__name__)

LESION_TABLE = "lesions.csv"
LESION_COLUMNS = (
    "patient_id",
    "study_id",
    "lesion_id",
    "tracking_id",
    "tracking_uid",
    "status",
    "present",
    "segment_number",
    "volume_mm3",
    "long_axis_mm",
    "short_axis_mm",
    "tracking_volume_mm3",
    "split_from",
    "merged_into",
    "seg_file",
    "sr_file",
)


@dataclass(frozen=True)
class StudyExport:
    """The objects written for one study.

    Attributes:
        patient_id: Patient pseudonym.
        study_id: Study pseudonym.
        study_uid: Original StudyInstanceUID (the objects' study).
        series_uid: The source series the SEG lies on.
        seg: The SEG file (None when no lesion is present in the study).
        sr: The SR file.
        rtstruct: The RTSTRUCT file (None unless asked for, or no lesion present).
        lesions: What the SEG/SR carry, one entry per tracked lesion.
    """

    patient_id: str
    study_id: str
    study_uid: str
    series_uid: str
    seg: Path | None
    sr: Path
    rtstruct: Path | None
    lesions: tuple[LesionEntry, ...]


@dataclass(frozen=True)
class TrackedExport:
    """Result of :func:`export_tracked`.

    Attributes:
        out: The output folder.
        studies: One record per exported study.
        lesion_table: ``lesions.csv``.
    """

    out: Path
    studies: tuple[StudyExport, ...]
    lesion_table: Path

    def files(self) -> list[Path]:
        """Every DICOM file written."""
        return [p for s in self.studies for p in (s.seg, s.sr, s.rtstruct) if p is not None]


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(
            f"{path}: {what} not found; point --tracking at a `metstrack track` output folder"
        )
    return pd.read_csv(path, dtype={"patient_id": str, "study_id": str})


def _study_entries(mapping: dict) -> dict[str, tuple[str, dict]]:
    """Study pseudonym -> (original StudyInstanceUID, mapping entry)."""
    return {e["study_id"]: (uid, e) for uid, e in mapping["studies"].items()}


def _native_map(
    tracked: Volume,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    transform,
    where: str,
) -> np.ndarray:
    if tracked.shape == tuple(shape) and np.allclose(
        tracked.affine, affine, atol=GRID_ATOL_MM, rtol=0
    ):
        return np.asarray(tracked.array, dtype=np.int32)
    if transform is None:
        raise GeometryMismatchError(
            f"{tracked.path}: the tracked map has {tracked.describe_grid()} but the source "
            f"series {where} has another grid and the tracking run used no transforms; track "
            "with --transforms (a `metstrack preprocess` output) so the map can be mapped back"
        )
    native = map_to_native(tracked, Grid(shape=tuple(shape), affine=affine), transform, order=0)
    return np.asarray(native.array, dtype=np.int32)


def _response(row: pd.Series | None) -> StudyResponse | None:
    if row is None:
        return None

    def f(key: str) -> float:
        v = row.get(key, math.nan)
        return float(v) if pd.notna(v) else math.nan

    tv, btv, ntv = (
        f("target_volume_mm3"),
        f("baseline_target_volume_mm3"),
        f("nadir_target_volume_mm3"),
    )
    values = {
        "sum_diameters_mm": f("sum_diameters_mm"),
        "baseline_sum_diameters_mm": f("baseline_sum_diameters_mm"),
        "nadir_sum_diameters_mm": f("nadir_sum_diameters_mm"),
        "change_from_baseline_percent": 100.0 * f("change_from_baseline_fraction"),
        "change_from_nadir_mm": f("change_from_nadir_mm"),
        "target_volume_mm3": tv,
        "baseline_target_volume_mm3": btv,
        "nadir_target_volume_mm3": ntv,
        "volume_change_from_baseline_percent": 100.0 * (tv - btv) / btv if btv > 0 else math.nan,
        "volume_change_from_nadir_mm3": tv - ntv,
    }
    return StudyResponse(
        rano_bm=str(row.get("rano_bm", "")),
        volumetric=str(row.get("volumetric", "")),
        values={k: v for k, v in values.items() if math.isfinite(v)},
    )


def _headers(geo) -> list[pydicom.Dataset]:
    """One header per source file (a multi-frame file once), in slice order."""
    seen, out = set(), []
    for inst in geo.instances:
        if inst.path in seen:
            continue
        seen.add(inst.path)
        out.append(pydicom.dcmread(inst.path, stop_before_pixels=True))
    return out


def export_tracked(
    tracking: str | Path,
    dicom: str | Path,
    mapping_path: str | Path,
    out: str | Path,
    *,
    sequence: str = "CT1",
    rtstruct: bool = False,
    pseudonymise: bool = False,
    patients: tuple[str, ...] = (),
    on_start: Callable[[int], None] | None = None,
    on_study: Callable[[StudyExport], None] | None = None,
) -> TrackedExport:
    """Write every tracked study's SEG + SR (+ RTSTRUCT) on its source series.

    Args:
        tracking: A ``metstrack track`` output folder.
        dicom: The DICOM export that was ingested (any folder tree holding the source series).
        mapping_path: The private pseudonym mapping ``metstrack ingest`` wrote.
        out: Output folder.
        sequence: The ingested sequence the masks lie on (its source series carries the SEG).
        rtstruct: Also write an RTSTRUCT per study.
        pseudonymise: Write the mapping's pseudonyms instead of the source identifiers.
        patients: Only these patient pseudonyms (all when empty).
        on_start: Called with the number of studies once the inputs are read (progress).
        on_study: Called after each study (progress).

    Returns:
        A :class:`TrackedExport`.

    Raises:
        DatasetError: Missing tracking tables, a study absent from the mapping.
        DicomSeriesError: A source series absent from ``dicom``.
        GeometryMismatchError: A tracked map that cannot be placed on its source series.
    """
    tracking, dicom, out = Path(tracking), Path(dicom), Path(out)
    traj = _read_table(tracking / "trajectories.csv", "trajectories.csv")
    resp = _read_table(tracking / "response.csv", "response.csv")
    mapping = read_mapping(Path(mapping_path))
    studies = _study_entries(mapping)
    transforms = _tracking_transforms(tracking)
    scan: DicomScan = scan_dicom(dicom)
    if patients:
        unknown = [p for p in patients if p not in set(traj["patient_id"])]
        if unknown:
            raise DatasetError(
                f"{tracking}: patient {unknown[0]!r} is not in trajectories.csv; "
                + did_you_mean(unknown[0], set(traj["patient_id"]))
            )
        traj = traj[traj["patient_id"].isin(patients)]
    run = _Run(
        scan=scan,
        tracking=tracking,
        out=out,
        sequence=sequence,
        rtstruct=rtstruct,
        pseudonymise=pseudonymise,
        mapping_path=Path(mapping_path),
        transforms=transforms,
    )
    for sid in traj["study_id"].unique():  # every input checked before anything is written
        if sid not in studies:
            raise DatasetError(
                f"{mapping_path}: study {sid} is not in the mapping; give the mapping file "
                "of the ingest that produced the tracked dataset"
            )
        _source_series(run, sid, studies[sid][1])
    results: list[StudyExport] = []
    rows: list[dict] = []
    if on_start is not None:
        on_start(int(traj.drop_duplicates(["patient_id", "study_id"]).shape[0]))
    for pid, ptraj in traj.groupby("patient_id", sort=True):
        order = ptraj.drop_duplicates("study_id").sort_values("study_index")["study_id"].tolist()
        anchor = studies[order[0]][0]
        for sid in order:
            study_uid, entry = studies[sid]
            res = _export_study(
                run,
                StudyKey(pid, sid, study_uid, anchor),
                entry,
                ptraj[ptraj["study_id"] == sid].sort_values("lesion_id"),
                resp[(resp["patient_id"] == pid) & (resp["study_id"] == sid)],
            )
            results.append(res)
            trows = ptraj[ptraj["study_id"] == sid].set_index("lesion_id")
            for les in res.lesions:
                t = trows.loc[les.lesion_id]
                rows.append(
                    {
                        "patient_id": pid,
                        "study_id": sid,
                        "lesion_id": les.lesion_id,
                        "tracking_id": les.tracking_id,
                        "tracking_uid": les.tracking_uid,
                        "status": les.status,
                        "present": les.present,
                        "segment_number": les.segment_number if les.present else "",
                        "volume_mm3": les.volume_mm3,
                        "long_axis_mm": les.long_axis_mm,
                        "short_axis_mm": les.short_axis_mm,
                        "tracking_volume_mm3": float(t["volume_mm3"]),
                        "split_from": t.get("split_from", ""),
                        "merged_into": t.get("merged_into", ""),
                        "seg_file": str(res.seg.relative_to(out)) if res.seg else "",
                        "sr_file": str(res.sr.relative_to(out)),
                    }
                )
            if on_study is not None:
                on_study(res)
    table = write_csv_atomic(out / LESION_TABLE, pd.DataFrame(rows, columns=list(LESION_COLUMNS)))
    write_json_atomic(
        out / "export_config.json",
        {
            "tracking": str(tracking),
            "dicom": str(dicom),
            "sequence": sequence,
            "rtstruct": rtstruct,
            "pseudonymise": pseudonymise,
            "patients": list(patients),
            "studies": len(results),
            "metstrack_version": __version__,
        },
    )
    return TrackedExport(out=out, studies=tuple(results), lesion_table=table)


def _tracking_transforms(tracking: Path) -> dict | None:
    """The transforms the tracking run used (``track_config.json``'s ``transforms``), if any."""
    cfg = tracking / "track_config.json"
    if not cfg.is_file():
        return None
    src = json.loads(cfg.read_text(encoding="utf-8")).get("transforms")
    if not src:
        return None
    if not Path(src).exists():
        raise DatasetError(
            f"{cfg}: the tracking run used transforms {src}, which no longer exist; "
            "restore them (the maps are on the baseline grid and need them to go back)"
        )
    return read_transforms(src)


def _object_uids(
    anchor: str,
    study_uid: str,
    series_uid: str,
    identity: PatientIdentity | None,
    native: np.ndarray,
    lesions: list[LesionEntry],
    resp: pd.DataFrame,
) -> dict[str, tuple[str, str]]:
    """(SeriesInstanceUID, SOPInstanceUID) of each object of one study, derived, not random.

    The series UID depends on the study and the identifier mode only, so every
    export of a study lands in the same three series; the SOP instance UID also
    hashes the content (voxels, lesion table, response, version), so exporting
    the same result again gives the same instances (a PACS keeps one copy) while
    a changed result gets new ones.
    """
    mode = "pseudonymised" if identity is not None else "identified"
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(native).tobytes())
    table = [
        (les.tracking_uid, les.status, les.volume_mm3, les.long_axis_mm, les.short_axis_mm)
        for les in lesions
    ]
    extra = resp.to_json(orient="records") if len(resp) else ""
    digest.update(json.dumps([__version__, series_uid, mode, table, extra]).encode())
    key = digest.hexdigest()
    return {
        kind: (
            derived_uid("metstrack-series", kind, anchor, study_uid, mode),
            derived_uid("metstrack-instance", kind, study_uid, key),
        )
        for kind in ("SEG", "SR", "RTSTRUCT")
    }


@dataclass(frozen=True)
class _Run:
    """Settings and inputs shared by every study of one export."""

    scan: DicomScan
    tracking: Path
    out: Path
    sequence: str
    rtstruct: bool
    pseudonymise: bool
    mapping_path: Path
    transforms: dict | None


@dataclass(frozen=True)
class StudyKey:
    """Which study is exported: pseudonyms, its original UID and its patient's anchor.

    Attributes:
        patient_id: Patient pseudonym.
        study_id: Study pseudonym.
        study_uid: Original StudyInstanceUID.
        anchor: Original StudyInstanceUID of the patient's baseline (seeds TrackingUIDs).
    """

    patient_id: str
    study_id: str
    study_uid: str
    anchor: str


def _source_series(run: _Run, sid: str, entry: dict) -> tuple[str, DicomSeriesInfo]:
    """The source series a study's objects go on (from the mapping, found in the scan).

    Raises:
        DatasetError: The mapping has no such sequence for the study.
        DicomSeriesError: The series is not in the scanned export.
    """
    series = entry.get("series", {})
    if run.sequence not in series:
        raise DatasetError(
            f"{run.mapping_path}: study {sid} has no ingested {run.sequence}; "
            + did_you_mean(run.sequence, series)
        )
    series_uid = str(series[run.sequence])
    info = run.scan.find(series_uid)
    if info is None or not info.is_image:
        raise DicomSeriesError(
            f"{run.scan.root}: the source series {uid_suffix(series_uid)} of study {sid} "
            f"({run.sequence}) is not there; point --dicom at the export that was ingested "
            "(or `metstrack pull` it again)"
        )
    return series_uid, info


def _export_study(
    run: _Run, key: StudyKey, entry: dict, rows: pd.DataFrame, resp: pd.DataFrame
) -> StudyExport:
    pid, sid, study_uid, anchor = key.patient_id, key.study_id, key.study_uid, key.anchor
    transform = run.transforms.get((pid, sid)) if run.transforms else None
    identity = PatientIdentity(pid, sid) if run.pseudonymise else None
    series_uid, info = _source_series(run, sid, entry)
    geo = series_geometry(info.instances, where=info.where)
    tracked = read_label(tracked_map_path(run.tracking, pid, sid), binary=False)
    native = _native_map(tracked, geo.shape, geo.affine, transform, info.where)
    voxel_mm3 = float(abs(np.linalg.det(geo.affine[:3, :3])))
    present_ids = [int(v) for v in np.unique(native) if v > 0]
    seg_no = {lid: n for n, lid in enumerate(present_ids, start=1)}
    lesions: list[LesionEntry] = []
    for _, row in rows.iterrows():
        lid = int(row["lesion_id"])
        uid = tracking_uid(anchor, lid)
        status = str(row["status"])
        if lid not in seg_no:
            if bool(row["present"]):
                log.warning(
                    "patient %s study %s lesion %s vanished when mapped onto the source grid",
                    pid,
                    sid,
                    tracking_id(lid),
                )
            lesions.append(LesionEntry(lid, tracking_id(lid), uid, status, 0.0))
            continue
        sel = native == lid
        bi = bidimensional_mm(sel, geo.affine)
        lesions.append(
            LesionEntry(
                lesion_id=lid,
                tracking_id=tracking_id(lid),
                tracking_uid=uid,
                status=status,
                volume_mm3=float(sel.sum()) * voxel_mm3,
                long_axis_mm=bi.long_axis_mm,
                short_axis_mm=bi.short_axis_mm,
                long_axis_lps_mm=bi.long_axis_points_mm * LPS_FROM_RAS,
                short_axis_lps_mm=bi.short_axis_points_mm * LPS_FROM_RAS,
                segment_number=seg_no[lid],
            )
        )
    folder = run.out / pid / sid
    vol = Volume(array=native, affine=geo.affine)
    uids = _object_uids(anchor, study_uid, series_uid, identity, native, lesions, resp)
    labels = [tracking_id(i) for i in present_ids]
    seg_tracking_uids = [tracking_uid(anchor, i) for i in present_ids]
    seg_path = rt_path = None
    if present_ids:
        seg_path = write_seg(
            vol,
            info,
            folder / "SEG.dcm",
            segment_labels=labels,
            tracking_uids=seg_tracking_uids,
            identity=identity,
            series_description="metstrack tracked lesions",
            instance_map=True,
            uids=uids["SEG"],
        )
        if run.rtstruct:
            rt_path = write_rtstruct(
                vol,
                info,
                folder / "RTSTRUCT.dcm",
                roi_names=labels,
                identity=identity,
                instance_map=True,
                uids=uids["RTSTRUCT"],
            )
    sr_path = write_tracked_sr(
        folder / "SR.dcm",
        source_headers=_headers(geo),
        seg_path=seg_path,
        lesions=lesions,
        response=_response(resp.iloc[0] if len(resp) else None),
        response_anchor=f"{anchor}/{study_uid}",
        identity=identity,
        uids=uids["SR"],
    )
    return StudyExport(
        patient_id=pid,
        study_id=sid,
        study_uid=study_uid,
        series_uid=series_uid,
        seg=seg_path,
        sr=sr_path,
        rtstruct=rt_path,
        lesions=tuple(lesions),
    )
