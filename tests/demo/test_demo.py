"""`metstrack demo` on a tiny configuration: every stage's outputs present and consistent."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from metstrack.io.release import read_release


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from typer.testing import CliRunner

    from metstrack.cli.main import app

    out = tmp_path_factory.mktemp("demo") / "run"
    r = CliRunner().invoke(
        app,
        [
            "demo",
            "--out",
            str(out),
            "--patients",
            "3",
            "--shape",
            "48",
            "--max-studies",
            "3",
            "--clinical-patients",
            "150",
            "--train-steps",
            "2",
            "--bootstrap",
            "20",
            "--workers",
            "1",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    return out, r.output


def test_closing_summary_names_the_report_and_headline_numbers(demo):
    out, output = demo
    assert "metstrack demo: done" in output
    assert "report/index.html" in output.replace("\n", "")
    assert "lesion F1" in output and "HR per cm3/month" in output
    s = json.loads((out / "demo_summary.json").read_text())
    names = [st["name"] for st in s["steps"]]
    assert names == [
        "synth",
        "validate",
        "preprocess",
        "train",
        "predict",
        "evaluate",
        "track",
        "survival (tracked burden)",
        "clinical cohort",
        "survival",
        "report",
    ]
    assert all(st["command"].startswith("metstrack ") for st in s["steps"])


def test_every_stage_output_is_present_and_consistent(demo):
    out, _ = demo
    data = read_release(out / "data")
    prep = read_release(out / "preprocessed")
    assert [p.patient_id for p in prep.patients] == [p.patient_id for p in data.patients]
    for st in data.studies:
        assert (
            out / "preprocessed" / "transforms" / st.patient_id / f"{st.study_id}.json"
        ).is_file()
        pred = (
            out
            / "predictions"
            / "predictions"
            / "patientId"
            / st.patient_id
            / "studyId"
            / st.study_id
        )
        assert (pred / "mask.nii.gz").is_file(), st.study_id
    assert (out / "model" / "run" / "checkpoints" / "best.ckpt").is_file()
    studies = pd.read_csv(out / "evaluation" / "studies.csv", dtype=str)
    assert set(studies["StudyID"] if "StudyID" in studies else studies.iloc[:, 1]) <= {
        s.study_id for s in data.studies
    }
    traj = pd.read_csv(out / "tracking" / "trajectories.csv", dtype={"patient_id": str})
    assert set(traj["patient_id"]) <= {p.patient_id for p in data.patients}
    surv = json.loads((out / "survival" / "summary.json").read_text())
    assert surv["n_input_patients"] == 150
    index = (out / "report" / "index.html").read_text()
    for p in data.patients:
        assert (out / "report" / "patients" / f"{p.patient_id}.html").is_file()
        assert p.patient_id in index


def test_every_step_is_in_the_catalog(demo):
    out, _ = demo
    con = sqlite3.connect(out / "catalog.sqlite")
    kinds = {k for (k,) in con.execute("SELECT kind FROM runs WHERE status='finished'")}
    assert {
        "synth",
        "preprocess",
        "train",
        "predict",
        "evaluate",
        "track",
        "survival",
        "report",
    } <= kinds
    n_pred = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    assert n_pred == len(read_release(out / "data").studies)
    n_patients = con.execute("SELECT COUNT(*) FROM patients").fetchone()[0]
    assert n_patients >= 3
    con.close()


def test_too_small_a_cohort_says_so_and_the_report_labels_the_separate_cohort(demo):
    out, output = demo
    s = json.loads((out / "demo_summary.json").read_text())
    reason = s["headline"]["tracked_survival"]
    assert "3 patients" in reason and "too few for a Cox fit" in reason
    assert (out / "survival_tracked" / "not_fitted.json").is_file()
    assert not (out / "survival_tracked" / "cox_summary.csv").exists()
    lines = [ln for ln in output.splitlines() if "Survival on the tracked burden" in ln]
    assert len(lines) == 1 and "3 patients" in lines[0]
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "Survival: a separate cohort" in html and "Survival of this cohort" not in html
    assert str(out / "clinical") in html
    assert "HR per cm3/month, clinical cohort" in output
    assert s["headline"]["survival_patients"] == 150
