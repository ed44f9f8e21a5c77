"""Every bad-input class through every command it applies to, as a hostile tester would.

For each (bad input, command) row the test asserts

* the exit code (1 for a data error, 2 for a usage error);
* that the message is one line naming the offending file (``validate`` reports
  its problems as a table: there the JSON record of the problem is checked);
* that nothing written earlier changed: every file of the workspace that existed
  before the command (inputs and the outputs of earlier successful runs of
  preprocess, predict, evaluate and survival) is byte-identical afterwards;
* that no traceback is printed.

The earlier outputs are made once per module from good inputs; each row copies
them, breaks one input, and runs the command (into the earlier output folder
where the command has one).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from tests.dataset_factory import affine, write_release

from metstrack.core import schema
from metstrack.io.checkpoint import save_checkpoint
from metstrack.io.dicom_synth import write_series
from metstrack.io.nifti import write_volume
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.synth.clinical import generate_clinical_only
from metstrack.types import LABEL_SEQUENCE
from metstrack.workflows.synth import write_clinical_only

PATIENTS = {"P01": [0.0, 30.0], "P02": [0.0, 60.0]}


def _invoke(*args):
    from typer.testing import CliRunner

    from metstrack.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _ok(*args) -> None:
    res = _invoke(*args)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Good inputs and the outputs of earlier successful runs."""
    ws = tmp_path_factory.mktemp("bad_inputs") / "ws"
    data = write_release(ws / "data", patients=PATIENTS)
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    ckpt = save_checkpoint(ws / "model.ckpt", build_model(cfg), cfg)
    _ok("preprocess", "--data", data, "--out", ws / "pp", "--no-brain-mask")
    _ok("predict", "--checkpoint", ckpt, "--data", data, "--out", ws / "preds")
    _ok("evaluate", "--pred", ws / "preds", "--ref", data, "--out", ws / "eval", "--bootstrap", "0")
    _ok("track", "--data", data, "--masks", ws / "preds", "--out", ws / "track", "--no-figures")
    _ok("report", "--data", data, "--predictions", ws / "preds", "--out", ws / "report")
    clin = write_clinical_only(generate_clinical_only(120, seed=4), ws / "clinical")
    _ok("survival", "--data", clin, "--out", ws / "surv", "--penalizer", "0.1")
    dcm = ws / "dicom" / "s1"
    write_series(dcm, np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3), description="T1")
    (ws / "empty_dicom").mkdir()
    return ws


# --------------------------------------------------------------------- bad inputs
def _study(ws: Path, pid: str = "P01", sid: str = "P01S1") -> Path:
    return schema.study_dir(ws / "data", pid, sid)


def corrupt_nifti(ws: Path) -> Path:
    p = _study(ws) / "CT1.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti image at all")[:12])  # truncated stream
    return p


def nan_image(ws: Path) -> Path:
    p = _study(ws) / "T2.nii.gz"
    arr = nib.load(p).get_fdata().astype(np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, affine()), p)
    return p


def orientation_mismatch(ws: Path) -> Path:
    """T2 on the same shape, spacing and origin as CT1, but its first axis runs R->L."""
    p = _study(ws) / "T2.nii.gz"
    a = affine()
    a[0, 0] = -1.0
    write_volume(nib.load(p).get_fdata().astype(np.float32), p, affine=a)
    return p


def multiclass_label(ws: Path) -> Path:
    p = _study(ws) / f"{LABEL_SEQUENCE}.nii.gz"
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1:7, 1:7, 1:7] = 2
    seg[3:5, 3:5, 3:5] = 3
    write_volume(seg, p, affine=affine())
    return p


def missing_imaging_table(ws: Path) -> Path:
    p = schema.table_path(ws / "data", schema.IMAGING_TABLE)
    p.unlink()
    return p


def garbage_catalog(ws: Path) -> Path:
    p = ws / "garbage.db"
    p.write_text("this is not a database " * 40)
    return p


def malicious_checkpoint(ws: Path) -> Path:
    payload = torch.load(ws / "model.ckpt", weights_only=True)
    payload["state_dict"]["net.evil"] = _Evil(ws / "PWNED")
    p = ws / "evil.ckpt"
    torch.save(payload, p)
    return p


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def probability_prediction(ws: Path) -> Path:
    p = schema.prediction_dir(ws / "preds", "P01", "P01S1") / "mask.nii.gz"
    prob = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(prob, affine()), p)
    return p


def prediction_grid_mismatch(ws: Path) -> Path:
    p = schema.prediction_dir(ws / "preds", "P01", "P01S1") / "mask.nii.gz"
    write_volume(np.zeros((8, 8, 6), np.uint8), p, affine=affine())
    return p


def unknown_clinical_patient(ws: Path) -> Path:
    p = schema.table_path(ws / "clinical", schema.PATIENTS_TABLE)
    pats = pd.read_csv(p, dtype=str)
    extra = pats.iloc[[0]].copy()
    extra["PatientID"] = "P99999"
    pd.concat([pats, extra]).to_csv(p, index=False)
    return p


def bad_clinical_value(ws: Path) -> Path:
    p = schema.table_path(ws / "clinical", schema.PATIENTS_TABLE)
    pats = pd.read_csv(p, dtype=str)
    pats.loc[2, "kps"] = "abc"
    pats.to_csv(p, index=False)
    return p


def empty_dicom_folder(ws: Path) -> Path:
    return ws / "empty_dicom"


# --------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One row: break an input, run a command, expect an exit code and a named file."""

    breaker: Callable[[Path], Path]
    command: Callable[[Path, Path], tuple]
    exit_code: int = 1
    new_output: str | None = None  # a folder the command must not even create


def validate(ws, bad):
    return ("validate", ws / "data", "--json", ws / "validate.json")


def preprocess(ws, bad):
    return ("preprocess", "--data", ws / "data", "--out", ws / "pp_new", "--no-brain-mask")


def preprocess_catalog(ws, bad):
    return (*preprocess(ws, bad), "--catalog", bad)


def predict(ws, bad):
    return (
        "predict",
        "--checkpoint",
        ws / "model.ckpt",
        "--data",
        ws / "data",
        "--out",
        ws / "preds",
    )


def predict_checkpoint(ws, bad):
    return ("predict", "--checkpoint", bad, "--data", ws / "data", "--out", ws / "preds")


def evaluate(ws, bad):
    return ("evaluate", "--pred", ws / "preds", "--ref", ws / "data", "--out", ws / "eval",
            "--bootstrap", "0")  # fmt: skip


def survival(ws, bad):
    return ("survival", "--data", ws / "clinical", "--out", ws / "surv", "--penalizer", "0.1")


def track(ws, bad):
    return ("track", "--data", ws / "data", "--masks", ws / "preds", "--out", ws / "track",
            "--no-figures")  # fmt: skip


def report(ws, bad):
    return ("report", "--data", ws / "data", "--predictions", ws / "preds", "--out", ws / "report")


def catalog_list(ws, bad):
    return ("catalog", bad, "list")


def dicom_scan(ws, bad):
    return ("dicom-scan", bad)


def ingest(ws, bad):
    return ("ingest", bad, "--out", ws / "ingested")


def ingest_catalog(ws, bad):
    return ("ingest", ws / "dicom", "--out", ws / "ingested", "--catalog", bad)


CASES: dict[str, Case] = {
    "corrupt-nifti/validate": Case(corrupt_nifti, validate),
    "corrupt-nifti/preprocess": Case(corrupt_nifti, preprocess),
    "corrupt-nifti/predict": Case(corrupt_nifti, predict),
    "nan-image/validate": Case(nan_image, validate),
    "nan-image/preprocess": Case(nan_image, preprocess),
    "nan-image/predict": Case(nan_image, predict),
    "orientation-mismatch/validate": Case(orientation_mismatch, validate),
    "orientation-mismatch/predict": Case(orientation_mismatch, predict),
    "multiclass-label/validate": Case(multiclass_label, validate),
    "multiclass-label/preprocess": Case(multiclass_label, preprocess),
    "multiclass-label/evaluate": Case(multiclass_label, evaluate),
    "missing-imaging-table/validate": Case(missing_imaging_table, validate),
    "missing-imaging-table/preprocess": Case(
        missing_imaging_table, preprocess, new_output="pp_new"
    ),
    "missing-imaging-table/predict": Case(missing_imaging_table, predict),
    "missing-imaging-table/evaluate": Case(missing_imaging_table, evaluate),
    "garbage-catalog/preprocess": Case(garbage_catalog, preprocess_catalog, new_output="pp_new"),
    "garbage-catalog/ingest": Case(garbage_catalog, ingest_catalog, new_output="ingested"),
    "malicious-checkpoint/predict": Case(malicious_checkpoint, predict_checkpoint),
    "probability-prediction/evaluate": Case(probability_prediction, evaluate),
    "probability-prediction/track": Case(probability_prediction, track),
    "probability-prediction/report": Case(probability_prediction, report),
    "prediction-grid-mismatch/evaluate": Case(prediction_grid_mismatch, evaluate),
    "prediction-grid-mismatch/track": Case(prediction_grid_mismatch, track),
    "prediction-grid-mismatch/report": Case(prediction_grid_mismatch, report),
    "corrupt-nifti/report": Case(corrupt_nifti, report),
    "missing-imaging-table/track": Case(missing_imaging_table, track),
    "garbage-catalog/catalog": Case(garbage_catalog, catalog_list),
    "unknown-clinical-patient/survival": Case(unknown_clinical_patient, survival),
    "bad-clinical-value/survival": Case(bad_clinical_value, survival),
    "empty-dicom-folder/dicom-scan": Case(empty_dicom_folder, dicom_scan),
    "empty-dicom-folder/ingest": Case(empty_dicom_folder, ingest, new_output="ingested"),
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, base: Path, tmp_path: Path) -> None:
    case = CASES[name]
    ws = Path(shutil.copytree(base, tmp_path / "ws"))
    bad = case.breaker(ws)
    before = _snapshot(ws)
    res = _invoke(*case.command(ws, bad))
    out = res.output
    assert res.exit_code == case.exit_code, out
    assert "Traceback" not in out, out
    after = _snapshot(ws)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"earlier files changed: {changed[:5]}"
    if case.new_output is not None:
        assert not (ws / case.new_output).exists()
    assert not (ws / "PWNED").exists()
    if case.command is validate:
        report = json.loads((ws / "validate.json").read_text())
        named = [
            p for p in report["problems"]
            if p["severity"] == "error"
            and ((ws / "data" / p["file"]).resolve() == bad.resolve() or str(bad) in p["message"])
        ]  # fmt: skip
        assert named and all("\n" not in p["message"] for p in named), report["problems"]
        return
    named = [ln for ln in out.splitlines() if str(bad) in ln]
    assert len(named) == 1, out
    assert named[0].startswith(("error:", "usage error:", "failed:")), out


def test_every_command_with_inputs_is_in_the_table() -> None:
    commands = {name.split("/")[1] for name in CASES}
    assert commands >= {"validate", "preprocess", "predict", "evaluate", "track", "report",
                        "survival", "catalog", "dicom-scan", "ingest"}  # fmt: skip
