"""`metstrack validate`: exit codes and report for each kind of bad input."""

from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from tests.dataset_factory import affine, edit_table, image, mask, write_release

from metstrack.core import schema
from metstrack.io.nifti import write_volume


def _study(root, pid="P01", sid="P01S1"):
    return schema.study_dir(root, pid, sid)


def _truncated_image(root):
    p = _study(root) / "T1.nii.gz"
    p.write_bytes(p.read_bytes()[:200])


def _corrupt_image(root):
    (_study(root) / "T2.nii.gz").write_bytes(gzip.compress(b"not nifti" * 40))


def _shape_mismatch(root):
    write_volume(image(1, shape=(8, 8, 6)), _study(root) / "FLAIR.nii.gz", affine=affine())


def _affine_mismatch(root):
    write_volume(image(1), _study(root) / "T1.nii.gz", affine=affine(origin=(0, 0, 0)))


def _non_binary_label(root):
    m = mask()
    m[0, 0, 0] = 3
    write_volume(m, _study(root) / "RTSTRUCT_segmentation.nii.gz", affine=affine())


def _bad_csv_row(root):
    edit_table(root, schema.IMAGING_TABLE, lambda df: df.assign(DaysFromBaselineScan="n/a"))


def _unknown_patient(root):
    edit_table(root, schema.TARGETS_TABLE, lambda df: df.assign(PatientID="P77"))


def _patient_in_two_splits(root):
    edit_table(
        root,
        schema.SPLIT_TABLE,
        lambda df: df.assign(
            train=np.where(df.StudyID == "P02S3", "0", df.train),
            val=np.where(df.StudyID == "P02S3", "1", df.val),
        ),
    )


def _flag_without_file(root):
    (_study(root, "P02", "P02S2") / "CT1.nii.gz").unlink()


@pytest.mark.parametrize(
    ("damage", "check"),
    [
        (_truncated_image, "readable"),
        (_corrupt_image, "readable"),
        (_shape_mismatch, "geometry"),
        (_affine_mismatch, "geometry"),
        (_non_binary_label, "label-binary"),
        (_bad_csv_row, "table"),
        (_unknown_patient, "table"),
        (_patient_in_two_splits, "split"),
        (_flag_without_file, "table-vs-files"),
    ],
)
def test_each_bad_input_exits_1_with_its_check(cli, tmp_path, damage, check):
    root = write_release(tmp_path / "ds")
    damage(root)
    out = tmp_path / "report.json"
    r = cli("validate", root, "--json", out)
    assert r.exit_code == 1, r.output
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] >= 1 and report["summary"]["ok"] is False
    assert check in {p["check"] for p in report["problems"] if p["severity"] == "error"}
    assert "error(s)" in r.output and "Problems in" in r.output


def test_clean_dataset_exits_0(cli, tmp_path):
    root = write_release(tmp_path / "ds")
    r = cli("validate", root, "--workers", "2")
    assert r.exit_code == 0, r.output
    assert "0 error(s), 0 warning(s)" in r.output
    assert "dataset is valid" in r.output


def test_missing_modality_is_a_warning_and_exits_0(cli, tmp_path):
    root = write_release(tmp_path / "ds")
    (_study(root) / "FLAIR.nii.gz").unlink()
    edit_table(
        root,
        schema.IMAGING_TABLE,
        lambda df: df.assign(FLAIR=np.where(df.StudyID == "P01S1", "0", df.FLAIR)),
    )
    out = tmp_path / "r.json"
    r = cli("validate", root, "--json", out)
    assert r.exit_code == 0, r.output
    assert "0 error(s), 1 warning(s)" in r.output
    (p,) = json.loads(out.read_text())["problems"]
    assert (p["severity"], p["check"]) == ("warning", "missing-sequence")
    assert p["file"] == "imaging/patientId/P01/studyId/P01S1/FLAIR.nii.gz"


def test_usage_errors_exit_2(cli, tmp_path):
    root = write_release(tmp_path / "ds")
    r = cli("validate", root, "--layout", "brats")
    assert r.exit_code == 2
    assert "did you mean 'brats-mets'" in r.output
    assert cli("validate", tmp_path / "absent").exit_code == 2
    assert cli("validate", root, "--workers", "0").exit_code == 2


def test_undetectable_folder_is_a_data_error(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = cli("validate", tmp_path)
    assert r.exit_code == 1
    assert "no known dataset layout" in r.output


def test_other_layout_through_the_cli(cli, tmp_path):
    case = tmp_path / "BraTS-MET-00001-000"
    for i, sfx in enumerate(("t1n", "t1c", "t2w", "t2f")):
        write_volume(image(i), case / f"BraTS-MET-00001-000-{sfx}.nii.gz", affine=affine())
    write_volume(
        image(9, shape=(8, 8, 5)), case / "BraTS-MET-00001-000-seg.nii.gz", affine=affine()
    )
    out = tmp_path / "r.json"
    r = cli("validate", tmp_path, "--layout", "brats-mets", "--json", out)
    assert r.exit_code == 1
    report = json.loads(out.read_text())
    assert report["layout"] == "brats-mets"
    checks = {(p["check"], p["file"]) for p in report["problems"]}
    assert ("geometry", "BraTS-MET-00001-000/BraTS-MET-00001-000-seg.nii.gz") in checks
    assert ("label-binary", "BraTS-MET-00001-000/BraTS-MET-00001-000-seg.nii.gz") in checks


DOC = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _doc_datasets(tmp_path):
    write_release(tmp_path / "my_dataset")
    case = tmp_path / "brats_cases" / "BraTS-MET-00001-000"
    for i, sfx in enumerate(("t1n", "t1c", "t2w", "t2f")):
        write_volume(image(i), case / f"BraTS-MET-00001-000-{sfx}.nii.gz", affine=affine())
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2:4, 2:4, 2:4] = 3
    write_volume(seg, case / "BraTS-MET-00001-000-seg.nii.gz", affine=affine())


def test_docs_cli_examples_run(cli, tmp_path, monkeypatch):
    _doc_datasets(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = [
        line
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.startswith("metstrack ")
    ]
    assert len(commands) == 3
    for line in commands:
        r = cli(*shlex.split(line)[1:])
        assert r.exit_code == 0, (line, r.output)
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["ok"] is True


def test_docs_python_examples_run(tmp_path, monkeypatch, capsys):
    _doc_datasets(tmp_path)
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "P01 P01S1 0.0 8" in out  # the reading example: patient, study, days, mask voxels
    assert out.strip().splitlines()[-1] == "0 0 {}"  # the validate example on a clean dataset


def test_label_classes_option(cli, tmp_path):
    case = tmp_path / "Mets_001"
    for i, stem in enumerate(("t1_pre", "t1_gd", "flair", "bravo")):
        write_volume(image(i), case / f"{stem}.nii.gz", affine=affine())
    write_volume(mask() * 255, case / "seg.nii.gz", affine=affine())
    assert cli("validate", tmp_path).exit_code == 1  # 0/255 is not a binary mask
    assert cli("validate", tmp_path, "--label-classes", "255").exit_code == 0
    r = cli("validate", tmp_path, "--label-classes", "one")
    assert r.exit_code == 2
    release = write_release(tmp_path / "release")
    r = cli("validate", release, "--label-classes", "1")
    assert r.exit_code == 2 and "does not apply" in r.output.replace("│", " ")
