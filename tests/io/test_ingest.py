"""DICOM export -> release layout: classification, RTSTRUCT labels, pseudonyms, bad input, resume."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pandas as pd
import pydicom
import pytest

from metstrack.catalog import Catalog
from metstrack.core import schema
from metstrack.errors import DicomSeriesError
from metstrack.io import ingest as ingest_mod
from metstrack.io.dicom_synth import (
    SECRET_BIRTH,
    SECRET_ID,
    SECRET_NAME,
    write_rtstruct,
    write_series,
)
from metstrack.io.ingest import IngestConfig, ingest_dicom
from metstrack.io.nifti import read_label, read_volume
from metstrack.io.pseudonyms import default_mapping_path, source_series_uid
from metstrack.io.release import read_release
from metstrack.io.rtstruct import RoiSelection

OTHER_ID, OTHER_NAME = "MRN-9911-OTHER", "Roe^Richard"
SECRETS = (SECRET_NAME, SECRET_ID, SECRET_BIRTH, OTHER_ID, OTHER_NAME, "Doe", "Roe")
SHAPE = (16, 16, 8)
STEP = 2.0
ORIGIN = np.array([-8.0, -8.0, 0.0])


def _circle(k, radius=4.0, centre=(7.5, 7.5)):
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    x, y = centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)
    return np.column_stack([ORIGIN[0] + x, ORIGIN[1] + y, np.full_like(t, ORIGIN[2] + k * STEP)])


def make_export(root, rng):
    """A small hospital-style export: 2 patients, 3 studies, assorted bad input."""
    img = rng.integers(0, 400, size=SHAPE).astype(np.uint16)
    a1 = dict(study_uid=pydicom.uid.generate_uid(), study_date="20200101", origin_lps=ORIGIN)
    base = root / "DOE_JANE" / "study_2020"
    write_series(base / "s1", img, description="AX T1 MPRAGE", series_number=1, **a1)
    write_series(
        base / "s2",
        img,
        description="AX T1 MPRAGE",
        contrast_agent="Gadavist",
        series_number=2,
        **a1,
    )
    write_series(base / "s3", img, description="AX T2 FSE", series_number=3, **a1)
    write_series(base / "s4", img, description="AX T2 FLAIR", series_number=4, **a1)
    plan = write_series(base / "s5", img, description="Stealth plan", series_number=5, **a1)
    write_series(base / "s6", img[:, :, :1], description="3-plane localizer", series_number=6, **a1)
    write_series(base / "s7", img, description="mystery scan", series_number=7, **a1)
    (base / "s7" / "DICOMDIR.txt").write_text("not dicom")
    write_rtstruct(
        base / "rt" / "RS.dcm",
        plan,
        [
            ("GTV_1", "GTV", [_circle(k) for k in range(2, 6)]),
            ("Brainstem", "ORGAN", [_circle(k, 2.0) for k in range(1, 3)]),
        ],
    )
    a2 = dict(study_uid=pydicom.uid.generate_uid(), study_date="20200315", origin_lps=ORIGIN)
    base2 = root / "DOE_JANE" / "study_2020b"
    write_series(base2 / "s1", img, description="T1 pre", series_number=1, **a2)
    broken = write_series(
        base2 / "s2", img, description="T1 post", series_number=2, shuffle_seed=None, **a2
    )
    broken[4].unlink()  # a missing slice
    write_series(base2 / "s3", img, description="FLAIR", series_number=3, **a2)
    b = dict(
        study_uid=pydicom.uid.generate_uid(),
        study_date="20210601",
        patient_id=OTHER_ID,
        patient_name=OTHER_NAME,
    )
    base3 = root / "ROE_RICHARD"
    ct1 = write_series(base3 / "mixed", img, description="T1 +C", series_number=1, **b)
    for p in write_series(base3 / "tmp", img, description="T2 TSE", series_number=2, **b):
        p.rename(base3 / "mixed" / f"t2_{p.name}")  # two series in one folder
    (base3 / "tmp").rmdir()
    write_series(
        base3 / "flair",
        img,
        description="FLAIR",
        series_number=3,
        positions_mm=[0, 2, 4, 6.7, 8.7, 10.7, 12.7, 14.7],  # uneven spacing
        **b,
    )
    write_rtstruct(
        base3 / "RS_orphan.dcm",
        ct1,
        [("GTV_x", "GTV", [_circle(3)])],
        series_uid="1.2.826.0.1.3680043.99.1",  # a series absent from the export
    )
    return root


@pytest.fixture
def export(tmp_path, rng):
    return make_export(tmp_path / "export", rng)


def _all_text(out):
    parts = []
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".csv", ".json"):
            parts.append(p.read_text())
    return "\n".join(parts)


def test_ingest_cohort(tmp_path, export, caplog):
    out = tmp_path / "release"
    with caplog.at_level(logging.DEBUG):
        report = ingest_dicom(export, out)
    assert report.count("written") == 3 and report.count("failed") == 0
    table = pd.read_csv(report.imaging_table, dtype={"PatientID": str, "StudyID": str})
    assert list(table.columns) == list(schema.IMAGING_COLUMNS)
    assert list(table.PatientID) == ["P0001", "P0001", "P0002"]
    assert list(table.StudyID) == ["S00001", "S00002", "S00003"]
    assert list(table.DaysFromBaselineScan) == [0.0, 74.0, 0.0]
    assert list(table.RelativeTimepoint) == [1, 2, 1]
    first = table.iloc[0]
    for seq in ("T1", "CT1", "T2", "FLAIR", "RTSTRUCT_MRI", "RTSTRUCT_segmentation"):
        assert first[seq] == 1, seq
    second = table.iloc[1]
    assert (second.T1, second.CT1, second.FLAIR, second.RTSTRUCT_segmentation) == (1, 0, 1, 0)
    third = table.iloc[2]
    assert (third.CT1, third.T2, third.RTSTRUCT_segmentation) == (1, 1, 0)
    # the label lies on the planning scan's grid and holds only the GTV (a cylinder)
    sdir = schema.study_dir(out, "P0001", "S00001")
    plan = read_volume(sdir / "RTSTRUCT_MRI.nii.gz")
    lab = read_label(sdir / "RTSTRUCT_segmentation.nii.gz", reference=plan)
    vol_mm3 = lab.array.sum() * lab.voxel_volume_mm3
    expected = np.pi * 16 * STEP * 4
    assert abs(vol_mm3 - expected) < 2 * np.pi * 4 * STEP * 4 * 0.5
    rois = pd.read_csv(schema.table_path(out, ingest_mod.ROI_TABLE))
    assert list(rois.roi_name) == ["GTV_1"]
    # the release reader accepts the result
    cohort = read_release(out, strict=True)
    assert [s.labelled for s in cohort.studies] == [True, False, False]
    assert [s.days_from_baseline for s in cohort.studies] == [0.0, 74.0, 0.0]
    inst = read_volume(out / "ingest" / "S00001" / "rtstruct_instances.nii.gz", dtype=None)
    assert set(np.unique(inst.array)) == {0, 1}
    # bad input is reported, naming folders, and the rest ingested
    problems = "\n".join(report.problems)
    assert (
        "missing slice" in problems and str(export / "DOE_JANE" / "study_2020b" / "s2") in problems
    )
    assert "absent from" in problems and "RS_orphan.dcm" in problems
    assert "mixed series in one folder" in problems and "ROE_RICHARD" in problems
    assert "skipped 1 file(s)" in problems
    assert "uneven slice spacing" in problems and str(export / "ROE_RICHARD" / "flair") in problems
    unclassified = "\n".join(report.unclassified)
    assert "mystery scan" in unclassified and "localizer" in unclassified
    # no patient-identifying value in messages, logs or the shareable output
    text = problems + unclassified + caplog.text + _all_text(out)
    for s in SECRETS:
        assert s not in text.replace(str(tmp_path), ""), s
    # the private mapping lives outside the dataset, readable by the owner only
    mapping = default_mapping_path(out)
    assert report.mapping_path == mapping and not mapping.is_relative_to(out)
    data = json.loads(mapping.read_text())
    assert data["patients"][SECRET_ID] == "P0001" and data["patients"][OTHER_ID] == "P0002"
    assert stat.S_IMODE(os.stat(mapping).st_mode) == 0o600


def test_ingest_rerun_skips_and_resumes(tmp_path, export):
    out = tmp_path / "release"
    ingest_dicom(export, out)
    table1 = schema.table_path(out, schema.IMAGING_TABLE).read_text()
    again = ingest_dicom(export, out)
    assert again.count("skipped") == 3 and again.count("written") == 0
    assert schema.table_path(out, schema.IMAGING_TABLE).read_text() == table1
    # a study removed is rewritten under the same pseudonym
    import shutil

    shutil.rmtree(schema.study_dir(out, "P0001", "S00002"))
    third = ingest_dicom(export, out)
    assert [s.study_id for s in third.studies if s.status == "written"] == ["S00002"]
    assert schema.table_path(out, schema.IMAGING_TABLE).read_text() == table1


def test_killed_run_leaves_no_partial_study(tmp_path, export, monkeypatch):
    out = tmp_path / "release"
    calls = {"n": 0}
    real = ingest_mod.write_volume

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # inside the second study
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "write_volume", flaky)
    db = tmp_path / "catalog.sqlite"
    with pytest.raises(KeyboardInterrupt):
        ingest_dicom(export, out, catalog_path=db)
    studies = sorted(p.name for p in out.glob("imaging/patientId/*/studyId/*"))
    assert studies == ["S00001"]  # complete, and nothing half-written beside it
    # its source series are already in the private mapping
    ct1 = source_series_uid(default_mapping_path(out), "S00001", "CT1")
    assert ct1.startswith("1.2.") and len(ct1) > 20
    with Catalog.open(db) as cat:
        assert cat.frame("runs").status.tolist() == ["running"]
        assert cat.frame("run_studies").study_id.tolist() == ["S00001"]
    monkeypatch.setattr(ingest_mod, "write_volume", real)
    report = ingest_dicom(export, out, catalog_path=db)
    assert report.count("skipped") == 1 and report.count("written") == 2
    assert len(pd.read_csv(report.imaging_table)) == 3
    with Catalog.open(db) as cat:  # the killed run resumed: no duplicate, nothing lost
        runs = cat.frame("runs")
        assert runs.status.tolist() == ["finished"] and runs.kind.tolist() == ["ingest"]
        assert sorted(cat.frame("run_studies").study_id) == ["S00001", "S00002", "S00003"]
        assert sorted(cat.frame("studies").study_id) == ["S00001", "S00002", "S00003"]
        assert cat.frame("labels").study_id.tolist() == ["S00001"]
        assert cat.integrity_problems() == []


def test_roi_selection_config(tmp_path, export):
    cfg = IngestConfig(rois=RoiSelection(types=("ORGAN",), name_pattern="", exclude_pattern=""))
    out = tmp_path / "release"
    ingest_dicom(export, out, config=cfg)
    rois = pd.read_csv(schema.table_path(out, ingest_mod.ROI_TABLE))
    assert list(rois.roi_name) == ["Brainstem"]


def test_no_dicom_is_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DicomSeriesError, match="no DICOM image series"):
        ingest_dicom(tmp_path / "empty", tmp_path / "out")


def test_study_without_patient_id_or_date(tmp_path, rng, caplog):
    img = rng.integers(0, 400, size=SHAPE).astype(np.uint16)
    write_series(tmp_path / "e" / "x", img, description="AX FLAIR", patient_id="", study_date="")
    with caplog.at_level(logging.WARNING):
        report = ingest_dicom(tmp_path / "e", tmp_path / "out")
    text = "\n".join(report.problems)
    assert "no PatientID" in text and "no StudyDate" in text
    table = pd.read_csv(report.imaging_table)
    assert table.FLAIR.tolist() == [1] and np.isnan(table.DaysFromBaselineScan[0])
    assert SECRET_NAME not in caplog.text + text


def test_no_matching_roi_keeps_planning_scan(tmp_path, export):
    cfg = IngestConfig(rois=RoiSelection(types=("CTV",), name_pattern="", exclude_pattern=""))
    report = ingest_dicom(export, tmp_path / "release", config=cfg)
    assert any("no ROI matches" in p and "GTV_1" in p for p in report.problems)
    first = pd.read_csv(report.imaging_table).iloc[0]
    assert (first.RTSTRUCT_MRI, first.RTSTRUCT_segmentation) == (1, 0)


def test_rerunning_ingest_adds_nothing_to_the_catalog(tmp_path, export):
    out, db = tmp_path / "release", tmp_path / "catalog.sqlite"
    ingest_dicom(export, out, catalog_path=db)
    with Catalog.open(db) as cat:
        first = cat.counts()
    for _ in range(2):
        ingest_dicom(export, out, catalog_path=db)
    with Catalog.open(db) as cat:
        assert cat.counts() == first
        assert first["runs"] == 1
