"""`metstrack evaluate`: outputs, missing predictions, parallel runs and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.dataset_factory import affine, write_release

from metstrack.core import schema
from metstrack.io.nifti import write_volume
from metstrack.types import LABEL_SEQUENCE

LABELLED = {"P01S1", "P01S2", "P02S1", "P02S3"}


def ref_mask(sid: str) -> np.ndarray:
    m = np.zeros((8, 8, 8), np.uint8)
    m[1:3, 1:3, 1:3] = 1  # 8 mm3, present at every study
    if sid.endswith(("S2", "S3")):
        m[5:7, 5:7, 5:7] = 1  # appears later: a new lesion
        m[6, 1, 6] = 1  # a 1 mm3 new lesion
    return m


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Reference dataset and predictions (P02S3's prediction is missing)."""
    ref = write_release(
        tmp_path / "data",
        patients={"P01": [0.0, 60.0], "P02": [0.0, 91.0, 180.0]},
        labelled=LABELLED,
    )
    pred = tmp_path / "preds"
    for sid in sorted(LABELLED):
        pid = sid[:3]
        write_volume(
            ref_mask(sid),
            schema.study_dir(ref, pid, sid) / f"{LABEL_SEQUENCE}.nii.gz",
            affine=affine(),
        )
        if sid == "P02S3":
            continue
        p = ref_mask(sid)
        p[6, 1, 6] = 0  # miss the 1 mm3 lesion
        p[0, 7, 7] = 1  # one false positive
        write_volume(p, schema.prediction_dir(pred, pid, sid) / "mask.nii.gz", affine=affine())
    return ref, pred


def run(cli, ref, pred, out, *extra):
    return cli("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--bootstrap", "50", *extra)


def test_outputs_and_missing_prediction(cli, dataset, tmp_path):
    ref, pred = dataset
    out = tmp_path / "out"
    r = run(cli, ref, pred, out, "--seed", "3")
    assert r.exit_code == 0, r.output
    for name in (
        "studies.csv", "lesions.csv", "longitudinal.csv", "summary.csv", "summary.json",
        "config.json",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    studies = pd.read_csv(out / "studies.csv")
    assert sorted(studies["study_id"]) == sorted(LABELLED)  # every labelled study, none skipped
    missing = studies.set_index("study_id")["prediction_missing"]
    assert missing["P02S3"] and missing.sum() == 1
    assert studies.set_index("study_id").loc["P02S3", "fn"] == 3
    lesions = pd.read_csv(out / "lesions.csv")
    assert set(lesions["kind"]) == {"tp", "fn", "fp"}
    pairs = pd.read_csv(out / "longitudinal.csv")
    assert list(pairs["study_id"]) == ["P01S2", "P02S3"]
    p01 = pairs.iloc[0]
    assert p01["ref_count_change"] == 2 and p01["n_new_ref"] == 2 and p01["new_detected"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_studies"] == 4 and summary["n_missing_predictions"] == 1
    assert summary["seed"] == 3 and summary["n_bootstrap"] == 50
    small = summary["metrics"]["sensitivity_[0,10)"]
    assert small["n_defined"] == 4 and 0 < small["value"] < 1
    assert summary["headline"]["fp_per_scan"] == pytest.approx(3 / 4)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["seed"] == 3 and cfg["ref"] == str(ref)
    assert "Lesion F1" in r.output and "missing" in r.output


def test_parallel_workers_give_the_same_tables(cli, dataset, tmp_path):
    ref, pred = dataset
    assert run(cli, ref, pred, tmp_path / "a").exit_code == 0
    assert run(cli, ref, pred, tmp_path / "b", "--workers", "2").exit_code == 0
    for name in ("studies.csv", "lesions.csv", "summary.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_brats_mode(cli, dataset, tmp_path):
    ref, pred = dataset
    r = run(cli, ref, pred, tmp_path / "o", "--mode", "brats", "--min-volume-mm3", "2")
    assert r.exit_code == 0, r.output
    lesions = pd.read_csv(tmp_path / "o" / "lesions.csv")
    assert "ignored" in set(lesions["kind"])  # the 1 mm3 lesions
    assert json.loads((tmp_path / "o" / "config.json").read_text())["config"]["mode"] == "brats"


def test_geometry_mismatch_names_both_files(cli, dataset, tmp_path):
    ref, pred = dataset
    bad = schema.prediction_dir(pred, "P01", "P01S1") / "mask.nii.gz"
    write_volume(ref_mask("P01S1"), bad, affine=affine(spacing=(1.0, 1.0, 2.0)))
    r = run(cli, ref, pred, tmp_path / "o")
    assert r.exit_code == 1
    assert "grids differ" in r.output and str(bad) in r.output
    assert f"{LABEL_SEQUENCE}.nii.gz" in r.output and "spacing (1, 1, 2)" in r.output
    assert not (tmp_path / "o" / "summary.json").exists()


def test_probability_map_needs_threshold(cli, dataset, tmp_path):
    ref, pred = dataset
    path = schema.prediction_dir(pred, "P01", "P01S1") / "mask.nii.gz"
    write_volume(ref_mask("P01S1").astype(np.float32) * 0.8, path, affine=affine())
    r = run(cli, ref, pred, tmp_path / "o")
    assert r.exit_code == 1 and "probability map" in r.output and str(path) in r.output
    r = run(cli, ref, pred, tmp_path / "o", "--threshold", "0.5")
    assert r.exit_code == 0, r.output


def test_probability_only_prediction(cli, dataset, tmp_path):
    ref, pred = dataset
    folder = schema.prediction_dir(pred, "P01", "P01S1")
    (folder / "mask.nii.gz").unlink()
    write_volume(
        ref_mask("P01S1").astype(np.float32) * 0.9, folder / "prob.nii.gz", affine=affine()
    )
    r = run(cli, ref, pred, tmp_path / "o")
    assert r.exit_code == 1 and "prob.nii.gz" in r.output and "--threshold" in r.output
    assert run(cli, ref, pred, tmp_path / "o", "--threshold", "0.5").exit_code == 0
    studies = pd.read_csv(tmp_path / "o" / "studies.csv").set_index("study_id")
    assert not studies.loc["P01S1", "prediction_missing"]


def test_corrupt_prediction_names_the_file(cli, dataset, tmp_path):
    ref, pred = dataset
    path = schema.prediction_dir(pred, "P02", "P02S1") / "mask.nii.gz"
    path.write_bytes(path.read_bytes()[:40])
    r = run(cli, ref, pred, tmp_path / "o")
    assert r.exit_code == 1 and str(path) in r.output


def test_bad_mode_is_a_usage_error(cli, dataset, tmp_path):
    ref, pred = dataset
    r = run(cli, ref, pred, tmp_path / "o", "--mode", "brat")
    assert r.exit_code == 2 and "brats" in r.output


def test_reference_without_dataset_is_a_data_error(cli, dataset, tmp_path):
    _, pred = dataset
    r = run(cli, tmp_path / "nothing", pred, tmp_path / "o")
    assert r.exit_code == 1 and "nothing" in r.output


DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def _blocks(lang: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    parts = text.split(f"```{lang}\n")[1:]
    return [p.split("```", 1)[0] for p in parts]


def test_docs_cli_example_runs(cli, dataset, tmp_path, monkeypatch):
    line = [ln for b in _blocks("console") for ln in b.splitlines() if "metstrack" in ln][0]
    args = line.removeprefix("$ ").split()
    assert args[:2] == ["metstrack", "evaluate"]
    monkeypatch.chdir(tmp_path)  # the fixture wrote data/ and preds/ here
    r = cli(*args[1:])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["n_bootstrap"] == 200 and summary["n_studies"] == 4


def test_docs_python_example_runs(capsys):
    code = _blocks("python")[0]
    exec(compile(code, str(DOC), "exec"), {})  # the block asserts its own results
    assert "HeadlineMetrics(lesion_f1=0.5" in capsys.readouterr().out


def test_docs_plain_folders_example_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks("python")[1], str(DOC), "exec"), {})
    line = [ln for b in _blocks("console") for ln in b.splitlines() if "metstrack" in ln][1]
    r = cli(*line.removeprefix("$ metstrack ").split())
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "results_plain" / "summary.json").read_text())
    assert summary["n_studies"] == 3 and summary["n_missing_predictions"] == 1
    assert summary["metrics"]["lesion_sensitivity"]["value"] == pytest.approx(1 / 3)


def test_synthetic_cohort_uses_ground_truth_identities(cli, tmp_path):
    """End to end on a generated cohort: new lesions come from the instance maps."""
    from metstrack.io.nifti import read_label
    from metstrack.io.release import read_release
    from metstrack.synth.config import SynthConfig
    from metstrack.workflows.synth import generate_cohort

    root = generate_cohort(
        SynthConfig(n_patients=2, seed=5, shape=48, max_studies=3), tmp_path / "c"
    )
    pred = tmp_path / "pred"
    expected_new, dropped = 0, False
    for patient in read_release(root).patients:
        prev_ids: set[int] | None = None
        for study in patient.studies:
            inst_path = root / "ground_truth" / "instances" / patient.patient_id
            inst = read_label(inst_path / f"{study.study_id}.nii.gz", binary=False)
            ids = set(np.unique(inst.array).tolist()) - {0}
            mask = inst.array > 0
            if prev_ids is not None:
                new = sorted(ids - prev_ids)
                expected_new += len(new)
                if new and not dropped:  # the prediction misses one new lesion
                    mask &= inst.array != new[0]
                    dropped = True
            prev_ids = ids
            folder = schema.prediction_dir(pred, patient.patient_id, study.study_id)
            write_volume(mask.astype(np.uint8), folder / "mask.nii.gz", affine=inst.affine)
    assert dropped and expected_new >= 2
    r = cli("evaluate", "--pred", pred, "--ref", root, "--out", tmp_path / "o", "--bootstrap", "20")
    assert r.exit_code == 0, r.output
    pairs = pd.read_csv(tmp_path / "o" / "longitudinal.csv")
    assert pairs["new_status_known"].all()
    assert pairs["n_new_ref"].sum() == expected_new
    assert pairs["new_detected"].sum() == expected_new - 1
