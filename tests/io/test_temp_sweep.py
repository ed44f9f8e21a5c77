"""Temporary files and staging folders of a killed run are swept when the next run starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metstrack.core.atomic import atomic_path, sweep_stale_staging, sweep_stale_temps
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_atomic_temporaries_carry_the_writer_pid(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "CT1.nii.gz") as tmp:
        assert tmp.name.startswith(f".CT1.nii.gz.{os.getpid()}-")
        assert tmp.name.endswith(".tmp.nii.gz")
        assert sweep_stale_temps(tmp_path) == 0  # a live writer's file is kept
        tmp.write_bytes(b"x")
    assert (tmp_path / "CT1.nii.gz").read_bytes() == b"x"


def test_dead_writers_files_are_removed_live_and_foreign_files_kept(tmp_path: Path) -> None:
    dead = _dead_pid()
    study = tmp_path / "imaging" / "patientId" / "P1" / "studyId" / "S1"
    study.mkdir(parents=True)
    stale = [
        study / f".CT1.nii.gz.{dead}-ab12cd34.tmp.nii.gz",
        tmp_path / f".prob.nii.gz.{dead}-x_9y8z7w.tmp.nii.gz",
        study / ".T2.nii.gz.k2j3h4g5.tmp.nii.gz",  # written before PIDs were recorded
    ]
    live = study / f".FLAIR.nii.gz.{os.getpid()}-abcdefgh.tmp.nii.gz"
    kept = [live, study / "CT1.nii.gz", study / ".hidden_notes.txt", tmp_path / "a.tmp"]
    for p in stale + kept:
        p.write_bytes(b"")
    assert sweep_stale_temps(tmp_path) == 3
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_synth_sweeps_a_killed_runs_staging_folder(tmp_path: Path) -> None:
    dead = _dead_pid()
    staging = tmp_path / f".cohort.partial-{dead}-abc_1234"
    legacy = tmp_path / ".cohort.partial-zz9_yy8x"
    other = tmp_path / ".other.partial-ab_12345"
    for d in (staging, legacy, other):
        (d / "imaging").mkdir(parents=True)
    cfg = SynthConfig(n_patients=1, shape=32, max_studies=2)
    generate_cohort(cfg, tmp_path / "cohort")
    assert not staging.exists() and not legacy.exists()
    assert other.exists()  # another output's staging is not ours to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-ab_12345", "cohort"]
    assert sweep_stale_staging(tmp_path, "other") == 1


def test_preprocess_sweeps_its_output(cli, tmp_path: Path) -> None:
    from tests.dataset_factory import write_release

    data = write_release(tmp_path / "data", patients={"P01": [0.0]})
    out = tmp_path / "pp"
    stale = out / "imaging" / "patientId" / "P01" / "studyId" / "P01S1"
    stale.mkdir(parents=True)
    leftover = stale / f".CT1.nii.gz.{_dead_pid()}-ab12cd34.tmp.nii.gz"
    leftover.write_bytes(b"partial")
    res = cli("preprocess", "--data", data, "--out", out, "--no-brain-mask")
    assert res.exit_code == 0, res.output
    assert not leftover.exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
