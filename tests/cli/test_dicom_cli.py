"""``metstrack dicom-scan``, ``ingest`` and ``export-rtstruct``: the documented example and bad input."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metstrack.io.dicom import scan_dicom
from metstrack.io.dicom_synth import SECRET_ID, SECRET_NAME, write_demo_export
from metstrack.io.export import read_seg
from metstrack.io.nifti import read_label, write_volume
from metstrack.io.rtstruct import rasterize_rtstruct, read_rtstruct

DOC = Path(__file__).resolve().parents[2] / "docs" / "dicom.md"
PLAN = "demo_export/patient1/study1/planning"
LABEL = "release/imaging/patientId/P0001/studyId/S00001/RTSTRUCT_segmentation.nii.gz"


def _doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_documented_example_runs(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    exec(_doc_blocks("python")[0], {})  # noqa: S102 - the documentation's own snippet
    commands = [
        line[2:] for line in _doc_blocks("console")[0].splitlines() if line.startswith("$ ")
    ]
    assert [shlex.split(c)[1] for c in commands] == [
        "dicom-scan",
        "ingest",
        "export-rtstruct",
        "export-rtstruct",
        "export-rtstruct",
    ]
    outputs = [cli(*shlex.split(c)[1:]) for c in commands]
    for c, r in zip(commands, outputs, strict=True):
        assert r.exit_code == 0, (c, r.output)
    assert "RTSTRUCT_MRI" in outputs[0].output and "CT1" in outputs[0].output
    assert "2 written" in outputs[1].output
    table = pd.read_csv("release/tables/imaging.csv")
    assert list(table.DaysFromBaselineScan) == [0.0, 91.0]
    assert "wrote 2 lesion RTSTRUCT ROI(s)" in outputs[2].output
    # the exported files re-import onto the planning series as the ingested label
    label = read_label(LABEL)
    series = scan_dicom(PLAN).image_series[0]
    rt = rasterize_rtstruct(read_rtstruct("lesions_rs.dcm"), label)
    np.testing.assert_array_equal(rt.binary.array, label.array)
    seg = read_seg("lesions_seg.dcm", series)
    np.testing.assert_array_equal(seg.array > 0, label.array > 0)
    # found through the mapping: the same planning series is referenced
    rt2 = read_rtstruct("lesions_rs2.dcm")
    assert rt2.referenced_series_uid == series.series_uid
    assert rt2.referenced_series_uid == read_rtstruct("lesions_rs.dcm").referenced_series_uid
    for r in outputs:
        assert SECRET_ID not in r.output and SECRET_NAME not in r.output


def test_rerun_reports_already_present(tmp_path, cli):
    write_demo_export(tmp_path / "e")
    assert cli("ingest", tmp_path / "e", "--out", tmp_path / "r").exit_code == 0
    r = cli("ingest", tmp_path / "e", "--out", tmp_path / "r")
    assert r.exit_code == 0 and "2 already present" in r.output


def test_ingest_bad_config_and_strict(tmp_path, cli):
    write_demo_export(tmp_path / "e")
    r = cli("ingest", tmp_path / "e", "--out", tmp_path / "r", "--set", "rois.typs=['PTV']")
    assert r.exit_code == 1 and "did you mean 'types'" in r.output
    (tmp_path / "e" / "notes.txt").write_text("x")
    r = cli("ingest", tmp_path / "e", "--out", tmp_path / "r", "--strict")
    assert r.exit_code == 1 and "skipped 1 file(s)" in r.output
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nsequence = "FLAIR"\npattern = "flair"\n')
    r = cli("ingest", tmp_path / "e", "--out", tmp_path / "r2", "--rules", rules)
    assert r.exit_code == 0 and "unclassified" in r.output
    assert pd.read_csv(tmp_path / "r2" / "tables" / "imaging.csv").T1.sum() == 0


def test_ingest_missing_source(tmp_path, cli):
    r = cli("ingest", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert r.exit_code == 1 and "folder not found" in r.output


@pytest.mark.parametrize("case", ["several_series", "wrong_grid", "probability_map"])
def test_export_bad_input(tmp_path, cli, case):
    write_demo_export(tmp_path / "e")
    series = tmp_path / "e" / "patient1" / "study1" / "planning"
    from metstrack.io.dicom_series import read_dicom_series

    vol = read_dicom_series(series)
    mask = np.zeros(vol.shape, np.uint8)
    mask[4:8, 4:8, 2:4] = 1
    path = tmp_path / "mask.nii.gz"
    if case == "wrong_grid":
        write_volume(mask[:-1], path, affine=vol.affine)
    elif case == "probability_map":
        write_volume(mask * 0.7, path, affine=vol.affine)
    else:
        write_volume(mask, path, affine=vol.affine)
        series = series.parent
    r = cli("export-rtstruct", "--mask", path, "--series", series, "--out", tmp_path / "o.dcm")
    assert r.exit_code == 1
    expected = {
        "several_series": "expected exactly one image series",
        "wrong_grid": "native grid",
        "probability_map": "non-integer",
    }[case]
    assert expected in r.output
    assert not (tmp_path / "o.dcm").exists()


def test_export_study_needs_mapping_and_known_study(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_demo_export(Path("demo_export"))
    assert cli("ingest", "demo_export", "--out", "release").exit_code == 0
    r = cli(
        "export-rtstruct",
        "--mask",
        LABEL,
        "--series",
        "demo_export",
        "--study",
        "S00001",
        "--out",
        "x.dcm",
    )
    assert r.exit_code == 2 and "--mapping" in r.output
    r = cli(
        "export-rtstruct",
        "--mask",
        LABEL,
        "--series",
        "demo_export",
        "--study",
        "S00009",
        "--mapping",
        "release-pseudonyms.json",
        "--out",
        "x.dcm",
    )
    assert r.exit_code == 1 and "unknown study 'S00009'" in r.output
    r = cli(
        "export-rtstruct",
        "--mask",
        LABEL,
        "--series",
        "demo_export",
        "--study",
        "S00002",
        "--sequence",
        "RTSTRUCT_MRI",
        "--mapping",
        "release-pseudonyms.json",
        "--out",
        "x.dcm",
    )
    assert r.exit_code == 1 and "has no ingested RTSTRUCT_MRI" in r.output
