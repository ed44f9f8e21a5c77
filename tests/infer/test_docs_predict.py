"""The worked examples of docs/predict.md run as written."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tests.docs_examples import run_examples


def test_predict_doc_examples_run(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_examples("predict.md", cli) >= 5
    masks = sorted((tmp_path / "preds" / "predictions").rglob("mask.nii.gz"))
    assert len(masks) == 4  # 2 patients x 2 studies
    assert len(list((tmp_path / "preds_py" / "predictions").rglob("lesions.csv"))) == 2
    brats = tmp_path / "preds_brats" / "predictions" / "patientId" / "BraTS-MET-00042"
    assert sorted(p.name for p in (brats / "studyId").iterdir()) == [
        "BraTS-MET-00042-000",
        "BraTS-MET-00042-001",
    ]
    days = pd.read_csv(
        tmp_path / "preds_brats" / "input" / "preprocessed" / "tables" / "imaging.csv"
    )
    assert days["DaysFromBaselineScan"].tolist() == [0.0, 91.0]
    study = tmp_path / "preds_study" / "predictions" / "patientId" / "study_2024" / "studyId"
    mask = nib.load(study / "study_2024" / "mask.nii.gz")
    t1c = np.asarray(nib.load(tmp_path / "study_2024" / "t1c.nii.gz").dataobj)
    assert mask.shape == t1c.shape and not ((np.asarray(mask.dataobj) > 0) & (t1c == 0)).any()
