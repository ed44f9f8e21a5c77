"""Ingest a hospital DICOM export into the release layout, pseudonymised.

``ingest_dicom(src, out)`` scans ``src`` (any folder structure), groups image
series by StudyInstanceUID and studies by PatientID, classifies each series
with the rule table (:mod:`metstrack.io.dicom_classify`), builds volumes
(:mod:`metstrack.io.dicom`), rasterises RTSTRUCTs onto the series they
reference (:mod:`metstrack.io.rtstruct`) and writes::

    <out>/imaging/patientId/<P>/studyId/<S>/{T1,CT1,T2,FLAIR,RTSTRUCT_MRI,RTSTRUCT_segmentation}.nii.gz
    <out>/tables/imaging.csv              one row per study (release columns)
    <out>/tables/rtstruct_rois.csv        one row per rasterised ROI
    <out>/ingest/<S>/rtstruct_instances.nii.gz   one ID per ROI (uint16)
    <out>/ingest/<S>/provenance.json      series used, rules, problems (no identifiers)
    <out>/ingest/config.json              the resolved IngestConfig
    <mapping>                             PRIVATE: original IDs, UIDs, dates -> pseudonyms

With ``catalog_path`` the run, each finished study and finally the ingested
dataset are recorded in the cohort catalog (:mod:`metstrack.catalog`).

Pseudonyms are sequential (``P0001``, ``S00001``) in order of the original
PatientID, StudyDate and StudyInstanceUID; the mapping file (default
``<out>-pseudonyms.json`` beside, not inside, ``<out>``) is the only place
the originals are kept. Keep it private; rerunning with the same mapping file
reuses the pseudonyms.

The series an RTSTRUCT references is the planning scan: it is written as
``RTSTRUCT_MRI`` and the selected ROIs as ``RTSTRUCT_segmentation`` on its
grid; when no other series of the study is classified ``CT1`` the planning
scan (a T1 post) is also written as ``CT1``. A planning series that is not MR
(a planning CT) is never filed as ``RTSTRUCT_MRI`` or ``CT1``: it is reported
and its contours are not written. Classification rules match MR series only
(``ClassificationRule.modality``), so a CT series is never filed as T1/CT1.

Bad input never stops the cohort: a series that fails a geometry check, an
RTSTRUCT whose referenced series is absent, unclassified series and skipped
files are reported in :class:`IngestReport` (naming folders and UID suffixes,
never patient values) and the rest is ingested. Each study is written into a
temporary folder and renamed into place, so a killed run leaves no partial
study; a rerun skips studies already present.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from metstrack.catalog import Catalog
from metstrack.config import config_fingerprint, save_config
from metstrack.core import schema
from metstrack.core.atomic import (
    sweep_stale_temps,
    write_csv_atomic,
    write_json_atomic,
)
from metstrack.errors import (
    DicomSeriesError,
    LabelError,
    MetstrackError,
)
from metstrack.io.dicom import DicomScan, DicomSeriesInfo, scan_dicom, uid_suffix
from metstrack.io.dicom_classify import ClassificationRules, classify_series
from metstrack.io.dicom_series import SPACING_RTOL, load_series
from metstrack.io.nifti import write_volume
from metstrack.io.pseudonyms import (
    assign_pseudonyms,
    default_mapping_path,
    load_mapping,
    save_mapping,
)
from metstrack.io.release import read_release
from metstrack.io.rtstruct import RoiSelection, check_reference, rasterize_rtstruct, read_rtstruct
from metstrack.types import LABEL_SEQUENCE, MODALITIES, PLANNING_SEQUENCE, SEQUENCES, Volume

log = logging.getLogger(__name__)

INGEST_DIR = "ingest"
ROI_TABLE = "rtstruct_rois.csv"
ROI_COLUMNS = (
    "PatientID",
    "StudyID",
    "instance_id",
    "roi_number",
    "roi_name",
    "interpreted_type",
    "voxel_count",
    "volume_mm3",
)


@dataclass(frozen=True)
class IngestConfig:
    """Settings of :func:`ingest_dicom` (TOML sections ``[classify]`` and ``[rois]``).

    Attributes:
        classify: The series classification rule table.
        rois: Which RTSTRUCT ROIs become the lesion mask.
        spacing_rtol: Allowed relative deviation of slice steps within a series.
        patient_prefix: Prefix of patient pseudonyms.
        study_prefix: Prefix of study pseudonyms.
    """

    classify: ClassificationRules = field(default_factory=ClassificationRules)
    rois: RoiSelection = field(default_factory=RoiSelection)
    spacing_rtol: float = SPACING_RTOL
    patient_prefix: str = "P"
    study_prefix: str = "S"


@dataclass(frozen=True)
class StudyOutcome:
    """What happened to one study.

    Attributes:
        patient_id: Patient pseudonym.
        study_id: Study pseudonym.
        status: ``"written"``, ``"skipped"`` (already present) or ``"failed"``.
        sequences: Sequences written.
        message: Why it failed ("" otherwise).
    """

    patient_id: str
    study_id: str
    status: Literal["written", "skipped", "failed"]
    sequences: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class IngestReport:
    """Summary of one ingest run.

    Attributes:
        out: The output dataset root.
        mapping_path: The private pseudonym mapping file.
        studies: One outcome per study found.
        unclassified: One message per image series no rule matched.
        problems: Warnings: skipped files, mixed folders, failed series, RTSTRUCT issues.
    """

    out: Path
    mapping_path: Path
    studies: tuple[StudyOutcome, ...]
    unclassified: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def count(self, status: str) -> int:
        """Number of studies with ``status``."""
        return sum(1 for s in self.studies if s.status == status)

    @property
    def imaging_table(self) -> Path:
        """The release imaging table written."""
        return schema.table_path(self.out, schema.IMAGING_TABLE)


def ingest_dicom(
    src: str | Path,
    out: str | Path,
    *,
    config: IngestConfig | None = None,
    mapping_path: str | Path | None = None,
    catalog_path: str | Path | None = None,
    on_study: Callable[[StudyOutcome], None] | None = None,
) -> IngestReport:
    """Convert a DICOM export under ``src`` into the release layout under ``out``.

    Args:
        src: Folder tree of DICOM files (patient/study/series folders or anything).
        out: Dataset root to write (created; existing studies are kept and skipped).
        config: Classification rules, ROI selection and tolerances.
        mapping_path: The private pseudonym mapping file (default
            :func:`default_mapping_path`).
        catalog_path: Optional cohort catalog (SQLite, :mod:`metstrack.catalog`): the
            run and each finished study are recorded as they complete (one
            transaction each), the ingested dataset is registered at the end; a
            killed run is resumed under the same run id.
        on_study: Called after each study (progress display).

    Returns:
        An :class:`IngestReport`.

    Raises:
        DicomSeriesError: ``src`` does not exist or holds no DICOM image series.
        DatasetError: The mapping file is unreadable.
    """
    cfg = config or IngestConfig()
    src, out = Path(src), Path(out)
    mapping_path = Path(mapping_path) if mapping_path else default_mapping_path(out)
    scan = scan_dicom(src)
    problems: list[str] = [*scan.skipped, *scan.notes]
    if not scan.image_series:
        raise DicomSeriesError(f"{src}: no DICOM image series found")
    by_study: dict[str, list[DicomSeriesInfo]] = defaultdict(list)
    for s in scan.series:
        by_study[_home_study(s, scan)].append(s)
    catalog = run_id = None
    if catalog_path is not None:  # an unusable catalog is refused before anything is written
        catalog = Catalog.open(catalog_path)
    mapping = load_mapping(mapping_path)
    problems += assign_pseudonyms(
        by_study, mapping, patient_prefix=cfg.patient_prefix, study_prefix=cfg.study_prefix
    )
    save_mapping(mapping_path, mapping)  # pseudonyms fixed before any study is written
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / INGEST_DIR / "config.json")
    _clean_partials(out)
    outcomes, unclassified = [], []
    order = sorted(by_study, key=lambda u: mapping["studies"][u]["study_id"])
    if catalog is not None:
        run_id = catalog.begin_run("ingest", cfg, source=str(src), output=str(out))
    try:
        for uid in order:
            entry = mapping["studies"][uid]
            t0 = time.perf_counter()
            outcome, uncl, probs = _ingest_study(uid, by_study[uid], scan, out, entry, cfg)
            outcomes.append(outcome)
            if outcome.status == "written":  # record its source series UIDs at once
                save_mapping(mapping_path, mapping)
            unclassified += uncl
            problems += probs
            for m in uncl + probs:  # returned in the report (the CLI prints each once)
                log.info(m)
            if catalog is not None and outcome.status != "failed":
                folder = schema.study_dir(out, outcome.patient_id, outcome.study_id)
                catalog.record_study_done(
                    run_id,
                    outcome.patient_id,
                    outcome.study_id,
                    outputs=[str(folder / f"{seq}.nii.gz") for seq in outcome.sequences],
                    seconds=time.perf_counter() - t0,
                )
            if on_study is not None:
                on_study(outcome)
        save_mapping(mapping_path, mapping)
        write_tables(out, mapping)
        if catalog is not None:
            problems += _register_dataset(catalog, out)
    except BaseException:
        if catalog is not None:
            catalog.close()  # the run stays 'running'; a rerun resumes it
        raise
    if catalog is not None:
        status = "failed" if any(o.status == "failed" for o in outcomes) else "finished"
        catalog.finish_run(run_id, status=status)
        catalog.close()
    return IngestReport(
        out=out,
        mapping_path=mapping_path,
        studies=tuple(outcomes),
        unclassified=tuple(unclassified),
        problems=tuple(problems),
    )


def _home_study(s: DicomSeriesInfo, scan: DicomScan) -> str:
    """The study a series belongs to; an RTSTRUCT joins the study of the series it references."""
    if s.modality != "RTSTRUCT":
        return s.study_uid
    for f in s.files:
        try:
            ref = scan.find(read_rtstruct(f).referenced_series_uid)
        except DicomSeriesError:
            continue
        if ref is not None:
            return ref.study_uid
    return s.study_uid


def _clean_partials(out: Path) -> None:
    sweep_stale_temps(out)  # temporary files of a killed run
    base = out / schema.IMAGING_DIR / "patientId"
    if base.exists():
        for p in base.glob("*/studyId/.*.partial*"):
            shutil.rmtree(p, ignore_errors=True)


def _rtstruct_references(
    structs: list[DicomSeriesInfo],
) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every readable RTSTRUCT file and the series it references; problems for the others."""
    refs: list[tuple[Path, str]] = []
    problems: list[str] = []
    for st in structs:
        for f in st.files:
            try:
                ss = read_rtstruct(f)
            except DicomSeriesError as exc:
                problems.append(str(exc))
                continue
            refs.append((f, ss.referenced_series_uid))
    return refs, problems


@dataclass
class _Classified:
    """Image series of a study sorted into sequences.

    Attributes:
        chosen: Sequence -> series (the lowest SeriesNumber wins a tie).
        provenance: One record per image series (description, sequence, rule).
        unclassified: Messages for series no rule placed.
        problems: Messages for second series of one sequence.
    """

    chosen: dict[str, DicomSeriesInfo] = field(default_factory=dict)
    provenance: list[dict] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _classify_images(
    images: list[DicomSeriesInfo], rt_refs: list[tuple[Path, str]], sid: str, cfg: IngestConfig
) -> _Classified:
    """Step 1: each image series to a sequence by the classification rules."""
    out = _Classified()
    for s in sorted(images, key=lambda s: (s.series_number, s.series_uid)):
        c = classify_series(s, cfg.classify)
        out.provenance.append(
            {
                "series": uid_suffix(s.series_uid),
                "description": s.series_description,
                "sequence": c.sequence,
                "reason": c.reason,
            }
        )
        if c.sequence is None:
            if any(s.series_uid == ref for _, ref in rt_refs):
                continue  # the planning scan is placed by its RTSTRUCT, not by the rules
            out.unclassified.append(f"{s.where}: unclassified series, {c.reason}")
            continue
        if c.sequence in out.chosen:
            out.problems.append(
                f"{s.where}: a second series classified {c.sequence} in study {sid}; kept "
                f"{uid_suffix(out.chosen[c.sequence].series_uid)} (lower SeriesNumber)"
            )
            continue
        out.chosen[c.sequence] = s
    return out


@dataclass
class _SeriesLoader:
    """Loads each series once; a series that does not load is appended to ``problems``."""

    spacing_rtol: float
    problems: list[str]
    loaded: dict[str, Volume] = field(default_factory=dict)

    def __call__(self, s: DicomSeriesInfo) -> Volume | None:
        """The series' volume, or ``None`` (the reason recorded in ``problems``)."""
        if s.series_uid in self.loaded:
            return self.loaded[s.series_uid]
        try:
            v = load_series(s, spacing_rtol=self.spacing_rtol)
        except DicomSeriesError as exc:
            self.problems.append(str(exc))
            return None
        self.loaded[s.series_uid] = v
        return v


@dataclass
class _Lesions:
    """The study's lesion mask from its first usable RTSTRUCT.

    Attributes:
        label: Binary mask on the planning scan's grid, or ``None``.
        instances: One value per ROI (``rtstruct_instances.nii.gz``), or ``None``.
        rois: One row per ROI for ``rtstruct_rois.csv``.
        planning: Volumes of the referenced MR series (planning scans), in RTSTRUCT order.
    """

    label: Volume | None = None
    instances: Volume | None = None
    rois: list[dict] = field(default_factory=list)
    planning: list[Volume] = field(default_factory=list)


def _rasterise_lesions(
    rt_refs: list[tuple[Path, str]],
    scan: DicomScan,
    load: _SeriesLoader,
    pid: str,
    sid: str,
    cfg: IngestConfig,
    problems: list[str],
) -> _Lesions:
    """Step 2: the first usable RTSTRUCT on an MR series, rasterised onto that series.

    Messages for RTSTRUCTs that cannot be used are appended to ``problems`` (in
    order with the loader's).
    """
    out = _Lesions()
    for f, ref_uid in rt_refs:
        ref = scan.find(ref_uid) if ref_uid else None
        if ref is None or not ref.is_image:
            problems.append(
                f"{f}: RTSTRUCT references series {uid_suffix(ref_uid) if ref_uid else '(none)'}, "
                f"which is absent from {scan.root}; no lesion mask written for study {sid}"
            )
            continue
        if ref.modality != "MR":
            # A CT (or other) planning series is no T1 post-contrast MRI: never file it
            # as RTSTRUCT_MRI or CT1, and its contours belong to its own grid.
            problems.append(
                f"{ref.where}: RTSTRUCT {f.name} references a {ref.modality or 'non-MR'} series, "
                f"not MR; it is not filed as {PLANNING_SEQUENCE} or CT1 and no lesion mask is "
                f"written for study {sid}; export the plan's MR series (or contours on it) instead"
            )
            continue
        if out.label is not None:
            problems.append(f"{f}: a second RTSTRUCT in study {sid}; only the first is used")
            continue
        vol = load(ref)
        if vol is None:
            continue
        # the referenced series is the planning scan even when no ROI can be used
        out.planning.append(vol)
        try:
            ss = read_rtstruct(f)
            check_reference(ss, ref.series_uid, {i.sop_instance_uid for i in ref.instances})
            if (
                ss.frame_of_reference_uid
                and ref.frame_of_reference_uid
                and (ss.frame_of_reference_uid != ref.frame_of_reference_uid)
            ):
                problems.append(
                    f"{f}: RTSTRUCT frame of reference differs from its series {ref.where}; "
                    "contours are placed by their coordinates as given"
                )
            masks = rasterize_rtstruct(ss, vol, selection=cfg.rois)
        except (DicomSeriesError, LabelError) as exc:
            problems.append(str(exc))
            continue
        problems += list(masks.problems)
        out.label, out.instances = masks.binary, masks.instances
        out.rois = [
            {
                "PatientID": pid,
                "StudyID": sid,
                "instance_id": r.instance_id,
                "roi_number": r.roi_number,
                "roi_name": r.name,
                "interpreted_type": r.interpreted_type,
                "voxel_count": r.voxel_count,
                "volume_mm3": r.volume_mm3,
            }
            for r in masks.rois
        ]
    return out


def _write_study(
    out: Path,
    final: Path,
    volumes: dict[str, Volume],
    lesions: _Lesions,
    provenance: dict,
) -> None:
    """Step 3: write the study into a partial folder, then move it into place at once."""
    sid = final.name
    tmp = final.parent / f".{sid}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for seq, vol in volumes.items():
            write_volume(
                vol.with_array(vol.array.astype(np.float32, copy=False)), tmp / f"{seq}.nii.gz"
            )
        if lesions.label is not None:
            write_volume(lesions.label, tmp / f"{LABEL_SEQUENCE}.nii.gz", dtype=np.uint8)
        side = out / INGEST_DIR / sid
        if lesions.instances is not None:
            write_volume(lesions.instances, side / "rtstruct_instances.nii.gz", dtype=np.uint16)
        write_json_atomic(side / "provenance.json", provenance)
        os.replace(tmp, final)  # the commit point: a study is all there or absent
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ingest_study(
    uid: str,
    series: list[DicomSeriesInfo],
    scan: DicomScan,
    out: Path,
    entry: dict,
    cfg: IngestConfig,
) -> tuple[StudyOutcome, list[str], list[str]]:
    """One study: classify its series, rasterise its RTSTRUCT, write it all at once.

    Returns:
        The outcome, messages for unclassified series, and other problems.
    """
    pid, sid = entry["patient_id"], entry["study_id"]
    final = schema.study_dir(out, pid, sid)
    if final.exists():
        have = tuple(s for s in SEQUENCES if (final / f"{s}.nii.gz").exists())
        return StudyOutcome(pid, sid, "skipped", have), [], []
    rt_refs, problems = _rtstruct_references([s for s in series if s.modality == "RTSTRUCT"])
    classified = _classify_images([s for s in series if s.is_image], rt_refs, sid, cfg)
    problems += classified.problems
    load = _SeriesLoader(cfg.spacing_rtol, problems)
    volumes: dict[str, Volume] = {}
    for seq in (*MODALITIES, PLANNING_SEQUENCE):
        if seq in classified.chosen and (v := load(classified.chosen[seq])) is not None:
            volumes[seq] = v
    lesions = _rasterise_lesions(rt_refs, scan, load, pid, sid, cfg, problems)
    if lesions.planning:
        volumes[PLANNING_SEQUENCE] = lesions.planning[-1]
        volumes.setdefault("CT1", lesions.planning[0])
    unclassified = classified.unclassified
    if not volumes:
        msg = f"study {sid} ({series[0].folders[0]}): no usable classified image series"
        return StudyOutcome(pid, sid, "failed", (), msg), unclassified, problems
    inverse = {id(v): uid for uid, v in load.loaded.items()}
    entry["series"] = {seq: inverse[id(v)] for seq, v in volumes.items()}  # private mapping only
    provenance = {
        "patient_id": pid,
        "study_id": sid,
        "series": classified.provenance,
        "rois": lesions.rois,
        # messages name source folders, which may be identifying: counts only here
        "problems": len(problems),
        "unclassified": len(unclassified),
        "config_fingerprint": config_fingerprint(cfg),
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_study(out, final, volumes, lesions, provenance)
    written = tuple(s for s in SEQUENCES if (final / f"{s}.nii.gz").exists())
    return StudyOutcome(pid, sid, "written", written), unclassified, problems


def write_tables(out: Path, mapping: dict) -> None:
    """Rebuild ``tables/imaging.csv`` and ``tables/rtstruct_rois.csv`` from the studies on disk.

    Days from baseline count from each patient's earliest StudyDate among the
    ingested studies; RelativeTimepoint is the 1-based rank by days.
    """
    rows = []
    for entry in mapping["studies"].values():
        d = schema.study_dir(out, entry["patient_id"], entry["study_id"])
        if not d.exists():
            continue
        row = {"PatientID": entry["patient_id"], "StudyID": entry["study_id"]}
        for seq in SEQUENCES:
            row[seq] = int((d / f"{seq}.nii.gz").exists())
        row["ExpertAdjusted"] = 0
        row["_date"] = entry.get("study_date", "")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*schema.IMAGING_COLUMNS, "_date"])
    date = pd.to_datetime(frame["_date"], format="%Y%m%d", errors="coerce")
    base = date.groupby(frame["PatientID"]).transform("min")
    frame["DaysFromBaselineScan"] = (date - base).dt.days.astype(float)
    frame = frame.sort_values(["PatientID", "DaysFromBaselineScan", "StudyID"], na_position="last")
    frame["RelativeTimepoint"] = frame.groupby("PatientID").cumcount() + 1
    frame = frame[list(schema.IMAGING_COLUMNS)].reset_index(drop=True)
    write_csv_atomic(schema.table_path(out, schema.IMAGING_TABLE), frame)
    roi_rows = []
    for entry in mapping["studies"].values():
        prov = out / INGEST_DIR / entry["study_id"] / "provenance.json"
        if prov.exists() and schema.study_dir(out, entry["patient_id"], entry["study_id"]).exists():
            roi_rows += json.loads(prov.read_text(encoding="utf-8")).get("rois", [])
    write_csv_atomic(
        schema.table_path(out, ROI_TABLE), pd.DataFrame(roi_rows, columns=list(ROI_COLUMNS))
    )


def _register_dataset(catalog, out: Path) -> list[str]:
    """Register the ingested dataset's patients, studies, series and labels in the catalog."""
    try:
        catalog.register_dataset(read_release(out))
    except MetstrackError as exc:
        msg = f"{out}: dataset not registered in the catalog: {exc}"
        log.warning(msg)
        return [msg]
    return []
