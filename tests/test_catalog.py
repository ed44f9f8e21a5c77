"""The cohort catalog: schema, migrations, idempotent writes, crash and resume, export."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metstrack.catalog import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    Catalog,
    OutputRecord,
    PredictionRecord,
    TrackRecord,
)
from metstrack.errors import DatasetError
from metstrack.types import Cohort, Lesion, Patient, Series, Study

SRC = Path(__file__).resolve().parents[1] / "src"


def _cohort(root: Path, n_patients: int = 2, n_studies: int = 3) -> Cohort:
    patients = []
    for i in range(n_patients):
        pid = f"P{i:02d}"
        studies = tuple(
            Study(
                study_id=f"{pid}S{k}",
                patient_id=pid,
                days_from_baseline=90.0 * (k - 1),
                relative_timepoint=k,
                series=(
                    Series("CT1", root / f"{pid}S{k}" / "CT1.nii.gz"),
                    Series("RTSTRUCT_segmentation", root / f"{pid}S{k}" / "seg.nii.gz"),
                ),
                labelled=True,
            )
            for k in range(1, n_studies + 1)
        )
        patients.append(Patient(pid, studies, split="train"))
    return Cohort(root=root, patients=tuple(patients))


def test_fresh_catalog_has_current_schema_and_every_table(tmp_path):
    with Catalog.open(tmp_path / "c.db") as cat:
        assert cat.schema_version == SCHEMA_VERSION
        counts = cat.counts()
        assert set(counts) == set(TABLES)
        assert counts["schema_version"] == SCHEMA_VERSION
        mode = cat._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_register_dataset_is_idempotent(tmp_path):
    cohort = _cohort(tmp_path)
    with Catalog.open(tmp_path / "c.db") as cat:
        assert cat.register_dataset(cohort) == 6
        assert cat.register_dataset(cohort) == 6
        c = cat.counts()
        assert (c["patients"], c["studies"], c["series"], c["labels"]) == (2, 6, 12, 6)
        assert cat.integrity_problems() == []
        # a second dataset naming the same studies (e.g. the preprocessed copy) adds files only
        cat.register_dataset(_cohort(tmp_path / "pp"))
        c = cat.counts()
        assert (c["datasets"], c["patients"], c["studies"], c["series"]) == (2, 2, 6, 24)
        roots = set(cat.frame("patients")["dataset_root"])
        assert roots == {str(tmp_path.resolve())}


def test_migration_from_version_1_keeps_rows(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    for stmt in MIGRATIONS[1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_version VALUES (1, 'then')")
    conn.execute("INSERT INTO datasets VALUES ('/raw', 'release', 'then')")
    conn.execute("INSERT INTO patients VALUES ('P1', '/raw', 'train')")
    conn.execute("INSERT INTO studies VALUES ('S1', 'P1', 0, 1, 1, 0)")
    conn.execute("INSERT INTO series VALUES ('S1', 'CT1', '/raw/S1/CT1.nii.gz')")
    conn.execute("INSERT INTO labels VALUES ('S1', '/raw/S1/seg.nii.gz', 0)")
    conn.execute(
        "INSERT INTO runs(kind, status, config_json, started_at) VALUES ('ingest', 'finished', '{}', 'then')"
    )
    conn.commit()
    conn.close()
    with Catalog.open(path) as cat:
        assert cat.schema_version == SCHEMA_VERSION > 1
        runs = cat.frame("runs")
        assert runs["kind"].tolist() == ["ingest"]
        assert runs["config_fingerprint"].tolist() == [""]
        series = cat.frame("series")
        assert series[["dataset_root", "study_id", "sequence"]].values.tolist() == [
            ["/raw", "S1", "CT1"]
        ]
        assert cat.frame("labels")["dataset_root"].tolist() == ["/raw"]
        assert cat.add_tracks(1, [TrackRecord(1, "S1", 1), TrackRecord(1, "S2", 1)]) == 2
        assert cat.counts()["lesion_tracks"] == 2
        assert cat.integrity_problems() == []


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "c.db"
    Catalog.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(DatasetError, match="newer than this metstrack"):
        Catalog.open(path)


def test_not_a_database_is_a_dataset_error(tmp_path):
    bad = tmp_path / "c.db"
    bad.write_text("this is not sqlite at all, just some text " * 20)
    with pytest.raises(DatasetError, match="not a usable metstrack catalog"):
        Catalog.open(bad)


def test_runs_resume_and_record_without_duplicates(tmp_path):
    with Catalog.open(tmp_path / "c.db") as cat:
        cfg = {"spacing_mm": 1.0}
        r1 = cat.begin_run("preprocess", cfg, output="out")
        cat.record_study_done(r1, "P00", "P00S1", outputs=["a.nii.gz", "b.json"], seconds=1.5)
        cat.record_study_done(r1, "P00", "P00S1", outputs=["a.nii.gz", "b.json"], seconds=1.5)
        assert cat.begin_run("preprocess", cfg, output="out") == r1  # unfinished: resumed
        assert cat.begin_run("preprocess", {"spacing_mm": 2.0}, output="out") != r1
        cat.finish_run(r1)
        assert cat.begin_run("preprocess", cfg, output="out") == r1  # finished: the same run
        assert cat.begin_run("preprocess", cfg, source="other", output="out") != r1
        assert cat.done_studies("preprocess") == {"P00S1"}
        assert cat.done_studies("predict") == set()
        assert cat.counts()["outputs"] == 2
        assert cat.counts()["run_studies"] == 1
        cat.add_outputs(r1, [OutputRecord("report.json", None, "report")] * 2)
        assert cat.counts()["outputs"] == 3
        cat.add_predictions(r1, [PredictionRecord("P00S1", "m.nii.gz", "p.nii.gz")] * 2)
        les = Lesion(1, 10, 10.0, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), 3.0, (0, 0, 0, 2, 2, 2))
        cat.add_lesions(r1, "P00S1", [les, Lesion(2, *list(vars(les).values())[1:])])
        cat.add_lesions(r1, "P00S1", [les])  # replaced, not appended
        assert cat.counts()["lesions"] == 1
        assert cat.counts()["predictions"] == 1


def test_export_csv_and_parquet(tmp_path):
    with Catalog.open(tmp_path / "c.db") as cat:
        cat.register_dataset(_cohort(tmp_path))
        cat.export("studies", tmp_path / "s.csv")
        cat.export("studies", tmp_path / "s.parquet", format="parquet")
        a = pd.read_csv(tmp_path / "s.csv")
        b = pd.read_parquet(tmp_path / "s.parquet")
        assert len(a) == len(b) == 6
        assert a["study_id"].tolist() == b["study_id"].tolist()
        with pytest.raises(DatasetError, match="did you mean 'studies'"):
            cat.export("studys", tmp_path / "x.csv")
        with pytest.raises(DatasetError, match="not supported"):
            cat.export("studies", tmp_path / "x.xlsx", format="xlsx")


_DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {src!r})
    from metstrack.catalog import Catalog, OutputRecord
    cat = Catalog.open({db!r})
    run = cat.begin_run("ingest", {{"k": 1}}, output="o")
    done = cat.done_studies("ingest", run_id=run)
    for i in range({n}):
        sid = f"S{{i:03d}}"
        if sid in done:
            continue
        outs = [OutputRecord(f"{{sid}}/f{{j}}.nii.gz", sid, "image") for j in range({per})]
        cat.record_study_done(run, "P", sid, outputs=outs, seconds=0.01)
        print(sid, flush=True)
        time.sleep({sleep})
    cat.finish_run(run)
    print("END", flush=True)
    """
)


def _driver(tmp_path: Path, n: int, per: int, sleep: float) -> list[str]:
    code = _DRIVER.format(src=str(SRC), db=str(tmp_path / "c.db"), n=n, per=per, sleep=sleep)
    return [sys.executable, "-c", code]


def test_catalog_survives_sigkill_and_resumes(tmp_path):
    n, per = 40, 50
    proc = subprocess.Popen(_driver(tmp_path, n, per, 0.02), stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if len(seen) == 10:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with Catalog.open(tmp_path / "c.db") as cat:
        assert cat.integrity_problems() == []
        done = cat.done_studies("ingest")
        assert set(seen) <= done and len(done) < n  # killed mid-way
        outs = cat.frame("outputs")
        per_study = outs.groupby("study_id").size()
        # each study's outputs were committed together with its done row, or not at all
        assert set(per_study.index) == done
        assert (per_study == per).all()
        runs = cat.frame("runs")
        assert runs["status"].tolist() == ["running"]
    # resume: same run, nothing duplicated, nothing lost
    out = subprocess.run(_driver(tmp_path, n, per, 0.0), capture_output=True, text=True, check=True)
    resumed = [s for s in out.stdout.split() if s != "END"]
    assert set(resumed).isdisjoint(done)
    with Catalog.open(tmp_path / "c.db") as cat:
        assert cat.integrity_problems() == []
        runs = cat.frame("runs")
        assert runs["status"].tolist() == ["finished"]
        assert cat.done_studies("ingest") == {f"S{i:03d}" for i in range(n)}
        outs = cat.frame("outputs")
        assert len(outs) == n * per
        assert not outs.duplicated(["run_id", "path"]).any()
        rs = cat.frame("run_studies")
        assert len(rs) == n and np.all(rs["run_id"] == runs["run_id"].iloc[0])
