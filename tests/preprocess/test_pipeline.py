"""preprocess_dataset end to end on a tiny misaligned phantom cohort, with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metstrack.catalog import Catalog
from metstrack.config import load_config
from metstrack.core import schema
from metstrack.core.mapping import load_transform, map_to_native
from metstrack.core.spatial import voxel_to_world
from metstrack.errors import ConfigError
from metstrack.io.nifti import read_volume
from metstrack.io.release import read_release
from metstrack.preprocess.config import PreprocessConfig
from metstrack.preprocess.outputs import provenance_path
from metstrack.preprocess.pipeline import preprocess_dataset
from metstrack.preprocess.register import residual_mm

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
        assert len(runs) == 1 and set(runs["status"]) == {"finished"}  # one run, repeated
        rs = cat.frame("run_studies")
        assert len(rs) == 4  # 4 studies, each once however often the run is repeated
        assert not cat.frame("outputs").duplicated(["run_id", "path"]).any()
        series = cat.frame("series")
        assert set(series["dataset_root"]) == {str(src.resolve()), str(out.resolve())}
        assert len(series) == 2 * 4 * 4  # T1, CT1, T2, label per study, in both datasets


@pytest.fixture(scope="module")
def plain_run(shared_cohort, tmp_path_factory):
    """The shared cohort preprocessed in-process without within-study registration."""
    out = tmp_path_factory.mktemp("plain") / "out"
    report = preprocess_dataset(shared_cohort[0], out, _cfg("register_within_study=false"))
    assert report.count("done") == 4
    return out


def _transforms(out) -> dict[str, list]:
    return {
        f.stem: json.loads(f.read_text())["baseline_to_study"]
        for f in (out / "transforms").rglob("*.json")
    }


def test_reruns_are_bit_identical_and_parallel_workers_agree(shared_cohort, plain_run, tmp_path):
    src = shared_cohort[0]
    b = preprocess_dataset(src, tmp_path / "b", _cfg("register_within_study=false"), workers=2)
    assert b.count("done") == 4
    assert _transforms(tmp_path / "b") == _transforms(plain_run)
    for f in plain_run.rglob("CT1.nii.gz"):
        other = tmp_path / "b" / f.relative_to(plain_run)
        assert np.array_equal(read_volume(f).array, read_volume(other).array)


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
from metstrack.preprocess.pipeline import preprocess_dataset
from metstrack.preprocess.config import PreprocessConfig
cfg = load_config(PreprocessConfig, None, {overrides!r})
preprocess_dataset({data!r}, {out!r}, cfg, workers=1, catalog_path={db!r})
"""


def test_preprocess_killed_with_sigkill_resumes_catalog_without_loss(
    shared_cohort, plain_run, tmp_path
):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src, truth, _ = shared_cohort
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
    assert _transforms(out) == _transforms(plain_run)  # the resumed result is the same


def test_metric_mask_option_restricts_through_time_metric(one_patient_cohort, tmp_path):
    src, truth, brains = one_patient_cohort
    out = tmp_path / "out"
    report = preprocess_dataset(
        src, out, _cfg("register_within_study=false", "metric_mask_mm=5.0"), workers=1
    )
    assert report.count("done") == 2
    prov = json.loads(provenance_path(out, "P00", "P00S2").read_text())
    step = next(s for s in prov["steps"] if s["step"] == "register_through_time")
    assert step["metric_mask_mm"] == 5.0
    brain, aff = brains["P00"]
    st = load_transform(out, "P00", "P00S2")
    err = residual_mm(st.baseline_to_study, truth["P00S2"], voxel_to_world(np.argwhere(brain), aff))
    assert np.median(err) < 1.0


def test_brats_layout_input_becomes_a_release_dataset_with_binary_labels(head, tmp_path):
    from metstrack.io.nifti import write_volume

    case = tmp_path / "brats" / "BraTS-MET-00001-000"
    t1c, brain = head(n=40, spacing_mm=2.5)
    t2, _ = head(n=40, spacing_mm=2.5, contrast="t2")
    seg = np.zeros(t1c.shape, np.uint8)
    seg[18:22, 18:22, 18:22] = 3  # enhancing tumour
    seg[19:21, 19:21, 19:21] = 1  # necrotic core
    seg[14:17, 18:22, 18:22] = 2  # oedema: not metastasis by default
    for suffix, vol in (("t1n", t1c), ("t1c", t1c), ("t2w", t2), ("t2f", t2)):
        write_volume(vol, case / f"BraTS-MET-00001-000-{suffix}.nii.gz")
    write_volume(seg, case / "BraTS-MET-00001-000-seg.nii.gz", affine=t1c.affine)
    out = tmp_path / "pp"
    report = preprocess_dataset(tmp_path / "brats", out, _cfg(), workers=1)
    assert report.count("done") == 1
    cohort = read_release(out)
    study = cohort.patients[0].studies[0]
    assert (cohort.patients[0].patient_id, study.study_id) == (
        "BraTS-MET-00001",
        "BraTS-MET-00001-000",
    )
    assert set(study.modalities_present) == {"T1", "CT1", "T2", "FLAIR"}
    lab = read_volume(study.label_path, dtype=None)
    assert lab.array.dtype == np.uint8 and set(np.unique(lab.array)) == {0, 1}
    assert lab.array.sum() == np.isin(seg, (1, 3)).sum()  # same grid: the union of ET and NETC
    saved = json.loads((out / "preprocess" / "config.json").read_text())
    assert saved["source_layout"] == "brats-mets" and saved["label_classes"] == [1, 3]
    # BraTS-METS co-registers every sequence onto one grid: shared_grid = "auto" does not
    # register them again, and says so in the provenance
    prov = json.loads(provenance_path(out, study.patient_id, study.study_id).read_text())
    within = [s for s in prov["steps"] if s["step"] == "register_within_study"]
    assert len(within) == 3 and all("shared_grid = 'auto'" in s["skipped"] for s in within)


def _within_steps(out, pid: str, sid: str) -> list[dict]:
    prov = json.loads(provenance_path(out, pid, sid).read_text())
    return [s for s in prov["steps"] if s["step"] == "register_within_study"]


@pytest.mark.parametrize(
    ("mode", "skipped"), [("auto", False), ("skip", True), ("register", False)]
)
def test_shared_grid_sequences_of_a_release_dataset(one_patient_cohort, tmp_path, mode, skipped):
    """The release layout promises no co-registration: ``auto`` registers shared-grid sequences.

    The phantom's T2 lies on the CT1's grid but moved within the study (a scanner
    that copies one series' geometry to the next while the patient moves): only
    ``skip`` leaves it unregistered, and then its residual motion shows.
    """
    src, _, _ = one_patient_cohort
    out = tmp_path / mode
    report = preprocess_dataset(src, out, _cfg(f'shared_grid="{mode}"'), workers=1)
    assert report.count("done") == 2
    within = _within_steps(out, "P00", "P00S2")
    assert [("skipped" in s) for s in within] == [skipped, skipped]  # T1 and T2
    if not skipped:
        assert all("study_ct1_to_sequence" in s for s in within)


def test_shares_grid_and_a_wrong_shared_grid_value():
    from metstrack.core.grid import shares_grid
    from metstrack.types import Volume

    a = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    moved = np.diag([2.0, 2.0, 2.0, 1.0])
    moved[0, 3] = 0.5
    assert shares_grid(a, Volume(np.ones((4, 5, 6), np.float32), a.affine.copy()))
    assert not shares_grid(a, Volume(np.zeros((4, 5, 6), np.float32), moved))
    assert not shares_grid(a, Volume(np.zeros((4, 5, 7), np.float32), a.affine.copy()))
    with pytest.raises(ConfigError, match=r"shared_grid: 'skp'.*'skip'"):
        PreprocessConfig(shared_grid="skp")
