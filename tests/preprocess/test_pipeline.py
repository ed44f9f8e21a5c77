"""preprocess_dataset end to end on a tiny misaligned phantom cohort, with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metstrack.catalog import Catalog
from metstrack.config import load_config
from metstrack.errors import ConfigError
from metstrack.io import schema
from metstrack.io.nifti import read_volume
from metstrack.io.release import read_release
from metstrack.preprocess.mapping import load_transform, map_to_native
from metstrack.preprocess.pipeline import (
    PreprocessConfig,
    preprocess_dataset,
    provenance_path,
)
from metstrack.preprocess.register import residual_mm
from metstrack.preprocess.spatial import voxel_to_world

#: Small pyramids and a coarse grid keep the test fast on two shared cores.
FAST = [
    "spacing_mm=2.5",
    "brain.working_spacing_mm=2.5",
    "through_time.shrink_factors=[2,1]",
    "through_time.smoothing_sigmas_mm=[2.0,0.0]",
    "through_time.sampling_percentage=0.25",
    "within_study.shrink_factors=[2,1]",
    "within_study.smoothing_sigmas_mm=[2.0,0.0]",
    "within_study.iterations=40",
]


def _cfg(*extra: str) -> PreprocessConfig:
    return load_config(PreprocessConfig, None, [*FAST, *extra])


def test_preprocess_dataset_end_to_end_and_resume(tiny_cohort, tmp_path):
    src, truth, brains = tiny_cohort
    out = tmp_path / "out"
    db = tmp_path / "catalog.db"
    report = preprocess_dataset(src, out, _cfg(), workers=1, catalog_path=db)
    assert (report.count("done"), report.count("failed")) == (4, 0)

    # same tables, readable as a release dataset, every study of a patient on one grid
    assert (out / "tables" / "imaging.csv").read_bytes() == (
        src / "tables" / "imaging.csv"
    ).read_bytes()
    cohort = read_release(out)
    for patient in cohort.patients:
        grids = []
        for study in patient.studies:
            for s in study.series:
                v = read_volume(s.path, dtype=None)
                grids.append((v.shape, v.affine))
                if s.sequence == "RTSTRUCT_segmentation":
                    assert v.array.dtype == np.uint8
                    assert set(np.unique(v.array)) <= {0, 1} and v.array.sum() > 0
                else:
                    assert v.array.dtype == np.float32
        assert all(g[0] == grids[0][0] and np.allclose(g[1], grids[0][1]) for g in grids)
        assert np.allclose(grids[0][1][:3, :3], np.eye(3) * 2.5)  # canonical RAS, isotropic

    # the recovered baseline_to_study matches the truth over the brain
    for sid, b2s in truth.items():
        pid = sid[:3]
        st = load_transform(out, pid, sid)
        brain, aff = brains[pid]
        err = np.median(
            residual_mm(st.baseline_to_study, b2s, voxel_to_world(np.argwhere(brain), aff))
        )
        assert err < 1.0, f"{sid}: median residual {err:.2f} mm"
        # the label maps back onto the native grid where the original label was
        native_lab = read_volume(
            src / "imaging/patientId" / pid / "studyId" / sid / "RTSTRUCT_segmentation.nii.gz",
            dtype=None,
        )
        pp_lab = read_volume(
            schema.study_dir(out, pid, sid) / "RTSTRUCT_segmentation.nii.gz", dtype=None
        )
        back = map_to_native(pp_lab, st.native_grid, st, order=0).array
        assert back.dtype == np.uint8
        inter = (back & native_lab.array).sum()
        assert 2 * inter / (back.sum() + native_lab.array.sum()) > 0.6

    # z-scored inside the brain, provenance records every step
    prov = json.loads(provenance_path(out, "P00", "P00S2").read_text())
    steps = [s["step"] for s in prov["steps"]]
    for name in (
        "reorient",
        "register_through_time",
        "register_within_study",
        "resample",
        "brain_mask",
        "normalize",
        "label",
    ):
        assert name in steps
    assert any(s["step"] == "missing" and s["sequence"] == "FLAIR" for s in prov["steps"])
    assert len(prov["input_fingerprint"]) == 16
    saved = json.loads((out / "preprocess" / "config.json").read_text())
    assert saved["config"]["spacing_mm"] == 2.5

    # resume: nothing redone, no duplicate catalog rows; a removed study is redone alone
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    again = preprocess_dataset(src, out, _cfg(), workers=1, catalog_path=db)
    assert (again.count("done"), again.count("skipped")) == (0, 4)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    load_transform(out, "P01", "P01S2")
    (out / "transforms" / "P01" / "P01S2.json").unlink()
    third = preprocess_dataset(src, out, _cfg(), workers=1, catalog_path=db)
    assert [o.study_id for o in third.outcomes if o.status == "done"] == ["P01S2"]
    with Catalog.open(db) as cat:
        assert cat.integrity_problems() == []
        assert cat.done_studies("preprocess") == set(truth)
        runs = cat.frame("runs")
        assert len(runs) == 3 and set(runs["status"]) == {"finished"}
        rs = cat.frame("run_studies")
        assert len(rs) == 12  # 4 studies x 3 runs (skipped ones recorded as done again)
        assert not cat.frame("outputs").duplicated(["run_id", "path"]).any()


def test_reruns_are_bit_identical_and_parallel_workers_agree(tiny_cohort, tmp_path):
    src, _, _ = tiny_cohort
    cfg = _cfg("register_within_study=false")
    a = preprocess_dataset(src, tmp_path / "a", cfg, workers=1)
    b = preprocess_dataset(src, tmp_path / "b", cfg, workers=2)
    assert a.count("done") == b.count("done") == 4
    for f in (tmp_path / "a" / "transforms").rglob("*.json"):
        ta = json.loads(f.read_text())["baseline_to_study"]
        tb = json.loads((tmp_path / "b" / f.relative_to(tmp_path / "a")).read_text())[
            "baseline_to_study"
        ]
        assert ta == tb


def test_missing_baseline_ct1_fails_that_patient_only(tiny_cohort, tmp_path):
    src, _, _ = tiny_cohort
    (schema.study_dir(src, "P00", "P00S1") / "CT1.nii.gz").unlink()
    import pandas as pd

    t = pd.read_csv(src / "tables" / "imaging.csv")
    t.loc[t.StudyID == "P00S1", "CT1"] = 0
    t.to_csv(src / "tables" / "imaging.csv", index=False)
    report = preprocess_dataset(
        src, tmp_path / "out", _cfg("register_within_study=false"), workers=1
    )
    failed = {o.study_id: o.message for o in report.failed}
    assert set(failed) == {"P00S1", "P00S2"}
    assert "baseline study P00S1 has no CT1" in failed["P00S1"]
    assert report.count("done") == 2


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(PreprocessConfig, None, ["spacing=1.0"])
    with pytest.raises(ConfigError, match="linear, bspline"):
        load_config(PreprocessConfig, None, ["image_interpolation=cubic"])


_KILLED_RUN = """
import sys
sys.path.insert(0, {src!r})
from metstrack.config import load_config
from metstrack.preprocess.pipeline import PreprocessConfig, preprocess_dataset
cfg = load_config(PreprocessConfig, None, {overrides!r})
preprocess_dataset({data!r}, {out!r}, cfg, workers=1, catalog_path={db!r})
"""


def test_preprocess_killed_with_sigkill_resumes_catalog_without_loss(tiny_cohort, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src, truth, _ = tiny_cohort
    out, db = tmp_path / "out", tmp_path / "c.db"
    code = _KILLED_RUN.format(
        src=str(Path(__file__).resolve().parents[2] / "src"),
        overrides=[*FAST, "register_within_study=false"],
        data=str(src),
        out=str(out),
        db=str(db),
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "transforms" / "P00").is_dir() and db.exists():
            with Catalog.open(db) as cat:
                n = len(cat.done_studies("preprocess"))
            if n >= 2:  # the first patient is registered; the second is in progress
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, "the run finished before it could be killed"
    with Catalog.open(db) as cat:
        assert cat.integrity_problems() == []
        assert cat.done_studies("preprocess") == {"P00S1", "P00S2"}
        assert cat.frame("runs")["status"].tolist() == ["running"]
    again = preprocess_dataset(src, out, _cfg("register_within_study=false"), catalog_path=db)
    assert again.count("failed") == 0
    with Catalog.open(db) as cat:
        assert cat.integrity_problems() == []
        runs = cat.frame("runs")
        assert runs["status"].tolist() == ["finished"]  # the killed run was resumed
        assert cat.done_studies("preprocess") == set(truth)
        outs = cat.frame("outputs")
        assert not outs.duplicated(["run_id", "path"]).any()
        per_study = outs.groupby("study_id").size()
        assert set(per_study.index) == set(truth)
        assert per_study.nunique() == 1  # every study has all its files (T1, CT1, T2, label...)
        assert set(outs["kind"]) >= {"image", "label", "transform", "brain_mask", "provenance"}
