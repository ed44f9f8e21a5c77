"""The HTML report: content matches the tables, pictures are real, Chromium renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from metstrack.core import schema
from metstrack.core.lesions import label_components
from metstrack.io.nifti import read_label, write_volume
from metstrack.io.release import read_release
from metstrack.synth.clinical import generate_clinical_only
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort, write_clinical_only


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, bench_folder):
    """A tiny cohort pushed through evaluate, track and survival, then the report."""
    from typer.testing import CliRunner

    from metstrack.cli.main import app

    run = CliRunner()
    tmp = tmp_path_factory.mktemp("report")
    data = tmp / "data"
    generate_cohort(
        SynthConfig(
            n_patients=2,
            seed=3,
            shape=48,
            min_studies=2,
            max_studies=3,
            motion_max_deg=0.0,
            motion_max_mm=0.0,
            acquisition="fixed",
        ),
        data,
    )
    cohort = read_release(data)
    pred = tmp / "pred"
    dropped = 0
    for study in cohort.studies:
        lab = read_label(study.any_label_path)
        mask = lab.array.copy()
        labels, n = label_components(mask)
        if n >= 2 and dropped == 0:  # miss the smallest lesion once: a reference-only contour
            sizes = np.bincount(labels.ravel())[1:]
            mask[labels == 1 + int(np.argmin(sizes))] = 0
            dropped += 1
        d = schema.prediction_dir(pred, study.patient_id, study.study_id)
        write_volume(lab.with_array(mask), d / "mask.nii.gz")
    ev, tr, sv, rep = tmp / "eval", tmp / "track", tmp / "surv", tmp / "report"
    assert (
        run.invoke(
            app,
            [
                "evaluate",
                "--pred",
                str(pred),
                "--ref",
                str(data),
                "--out",
                str(ev),
                "--bootstrap",
                "50",
            ],
        ).exit_code
        == 0
    )
    r = run.invoke(app, ["track", "--data", str(data), "--masks", str(pred), "--out", str(tr)])
    assert r.exit_code == 0, r.output
    clin = write_clinical_only(generate_clinical_only(300, seed=1), tmp / "clin")
    r = run.invoke(app, ["survival", "--data", str(clin), "--out", str(sv)])
    assert r.exit_code == 0, r.output
    r = run.invoke(
        app,
        [
            "report",
            "--data",
            str(data),
            "--predictions",
            str(pred),
            "--evaluation",
            str(ev),
            "--tracking",
            str(tr),
            "--survival",
            str(sv),
            "--benchmark",
            str(bench_folder(tmp / "bench")),
            "--out",
            str(rep),
        ],
    )
    assert r.exit_code == 0, r.output
    return {
        "data": data,
        "cohort": cohort,
        "eval": ev,
        "track": tr,
        "surv": sv,
        "report": rep,
        "dropped": dropped,
    }


def test_every_patient_and_study_is_present(pipeline):
    rep, cohort = pipeline["report"], pipeline["cohort"]
    index = (rep / "index.html").read_text()
    for p in cohort.patients:
        assert f"patients/{p.patient_id}.html" in index
        page = (rep / "patients" / f"{p.patient_id}.html").read_text()
        for s in p.studies:
            assert f"<h3>{s.study_id}:" in page
            assert f"../img/{p.patient_id}_{s.study_id}.png" in page
        assert f"../img/{p.patient_id}_timeline.png" in page
        assert "<h2>Lesions</h2>" in page


def test_numbers_match_the_tables(pipeline):
    rep = pipeline["report"]
    index = (rep / "index.html").read_text()
    ev = json.loads((pipeline["eval"] / "summary.json").read_text())["headline"]
    facts = json.loads((rep / "report.json").read_text())
    assert facts["evaluation_headline"]["lesion_f1"] == pytest.approx(ev["lesion_f1"])
    from metstrack.report.html import fmt

    assert f"<div class='v'>{fmt(ev['lesion_f1'])}</div><div class='k'>lesion F1" in index
    cox = json.loads((pipeline["surv"] / "summary.json").read_text())["headline"]
    assert fmt(cox["hr_rate_volume_per_cm3_month"]) in index
    import pandas as pd

    traj = pd.read_csv(pipeline["track"] / "trajectories.csv", dtype={"patient_id": str})
    n_ids = traj[["patient_id", "lesion_id"]].drop_duplicates().shape[0]
    assert facts["tracking"]["lesions"] == n_ids
    assert f"<div class='v'>{n_ids}</div><div class='k'>lesion identities" in index
    for pid, pf in facts["patients"].items():
        assert pf["lesion_rows"] == int((traj["patient_id"] == pid).sum())
        # each lesion listed by the TrackingID its DICOM SEG/SR carry ("L3")
        ids = sorted(traj.loc[traj["patient_id"] == pid, "lesion_id"].unique())
        assert pf["tracking_ids"] == [f"L{i}" for i in ids]
        page = (rep / "patients" / f"{pid}.html").read_text()
        for i in ids:
            assert f"<td class='l'>L{i}</td>" in page
    # the deliberately missed lesion shows as a reference-only contour somewhere
    assert pipeline["dropped"] == 1
    assert (
        sum(
            s["n_ref_only_lesions"]
            for p in facts["patients"].values()
            for s in p["studies"].values()
        )
        >= 1
    )
    # strata table, with the small stratum always reported
    assert re.search(r"<td class='l'>\[0, ?10\)", index) or "0-10" in index or "[0,10)" in index


def test_images_are_real_pictures(pipeline):
    imgs = list((pipeline["report"] / "img").glob("*.png"))
    assert len(imgs) >= sum(len(p.studies) for p in pipeline["cohort"].patients) + 1
    for p in imgs:
        a = np.asarray(Image.open(p).convert("L"), dtype=float)
        assert a.shape[0] > 50 and a.shape[1] > 50
        assert a.std() > 5, f"{p.name} is blank"
    # contours are drawn in colour on the study strips
    strip = next(p for p in imgs if "_S" in p.name and "timeline" not in p.name)
    rgb = np.asarray(Image.open(strip).convert("RGB"), dtype=int)
    orange = (rgb[..., 0] > 200) & (rgb[..., 1] > 90) & (rgb[..., 1] < 170) & (rgb[..., 2] < 80)
    assert orange.sum() > 5, "no predicted contour drawn"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_renders_in_headless_chromium(pipeline, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed here (CI installs it): apt-get install chromium")
    rep = pipeline["report"]
    pages = [rep / "index.html", *sorted((rep / "patients").glob("*.html"))]
    for page in pages:
        out = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chr'}",
                "--allow-file-access-from-files",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        m = re.search(
            r'data-images-total="(\d+)" data-images-ok="(\d+)" data-errors="(\d+)"', out.stdout
        )
        assert m, f"{page.name}: the page's load check did not run"
        total, ok, errors = (int(g) for g in m.groups())
        assert total >= 1 and ok == total, f"{page.name}: {ok}/{total} images displayed"
        assert errors == 0, f"{page.name}: {errors} script errors"
