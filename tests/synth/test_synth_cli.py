"""``metstrack synth``: the documented example, options, and errors."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

DOC = Path(__file__).resolve().parents[2] / "docs" / "synth.md"


def _doc_commands() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    cmds = re.findall(r"^\$ metstrack (synth .+)$", text, flags=re.MULTILINE)
    return [shlex.split(c) for c in cmds]


def test_documented_example_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmds = _doc_commands()
    assert len(cmds) >= 2
    example = cmds[0]
    r = cli(*example)
    assert r.exit_code == 0, r.output
    out = tmp_path / example[example.index("--out") + 1]
    imaging = pd.read_csv(out / "tables" / "imaging.csv")
    assert imaging["PatientID"].nunique() == int(example[example.index("--patients") + 1])
    assert imaging.groupby("PatientID").size().max() <= 4
    assert (out / "ground_truth" / "survival_truth.json").exists()
    assert "patients" in r.output and "studies" in r.output


def test_documented_clinical_only_example_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = [c for c in _doc_commands() if "--clinical-only" in c][0]
    r = cli(*example)
    assert r.exit_code == 0, r.output
    out = tmp_path / example[example.index("--out") + 1]
    assert len(pd.read_csv(out / "tables" / "clinical_patients.csv")) == 1429
    assert not (out / "imaging").exists()


def test_no_motion_and_config_file(cli, tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('n_patients = 1\nshape = 32\nmax_studies = 3\nlabelled = "all"\n')
    r = cli("synth", "--config", cfg, "--no-motion", "--seed", "2", "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    tf = pd.read_csv(tmp_path / "c" / "ground_truth" / "transforms.csv")
    assert (tf["angle_deg"] == 0).all() and (tf["translation_mm"] == 0).all()
    imaging = pd.read_csv(tmp_path / "c" / "tables" / "imaging.csv")
    assert (imaging["RTSTRUCT_segmentation"] == 1).all()


def test_bad_settings_are_usage_errors(cli, tmp_path):
    r = cli("synth", "--shape", "8", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "shape" in r.output
    r = cli("synth", "--set", "hazard_rati=2", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "hazard_ratio" in r.output
    r = cli("synth", "--config", tmp_path / "missing.toml", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "missing.toml" in r.output
    assert not (tmp_path / "x").exists()


def test_rerun_replaces_a_synthetic_cohort_but_protects_other_data(cli, tmp_path):
    args = ("synth", "--clinical-only", "--patients", "5", "--out", tmp_path / "c")
    assert cli(*args).exit_code == 0
    r = cli(*args, "--seed", "9")  # a previous synthetic cohort is simply replaced
    assert r.exit_code == 0, r.output
    assert '"seed": 9' in (tmp_path / "c" / "ground_truth" / "config.json").read_text()
    # A release-layout dataset synth did not write needs --overwrite.
    (tmp_path / "c" / "ground_truth" / "config.json").unlink()
    r = cli(*args)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert cli(*args, "--overwrite").exit_code == 0
    # Anything else is never touched, even with --overwrite.
    (tmp_path / "c" / "notes.txt").write_text("mine")
    r = cli(*args, "--overwrite")
    assert r.exit_code == 1 and "refusing" in r.output
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".c.partial-*"))


def test_documented_full_size_world_example_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = [c for c in _doc_commands() if "--spacing" in c][0]
    r = cli(*example)
    assert r.exit_code == 0, r.output
    out = tmp_path / example[example.index("--out") + 1]
    cfg = json.loads((out / "ground_truth" / "config.json").read_text())["config"]
    assert (cfg["anatomy"], cfg["contrast"], cfg["skull"], cfg["spacing_mm"]) == (
        "template",
        "mixed",
        "mixed",
        2.0,
    )
    imaging = pd.read_csv(out / "tables" / "imaging.csv")
    for pid, group in imaging.groupby("PatientID"):
        grids = [
            nib.load(out / "imaging" / "patientId" / pid / "studyId" / s / "CT1.nii.gz").affine
            for s in group["StudyID"]
        ]
        assert np.allclose(np.linalg.norm(grids[0][:3, :3], axis=0), 2.0)
        assert not np.allclose(grids[1], grids[0], atol=1e-3)  # follow-up on its own grid


def test_no_motion_conflicts_with_clinical_acquisition(cli, tmp_path):
    r = cli("synth", "--no-motion", "--acquisition", "clinical", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--no-motion" in r.output
