"""The worked examples of docs/predict.md run as written."""

from __future__ import annotations

from pathlib import Path

from tests.docs_examples import run_examples


def test_predict_doc_examples_run(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_examples("predict.md", cli) >= 5
    masks = sorted((tmp_path / "preds" / "predictions").rglob("mask.nii.gz"))
    assert len(masks) == 4  # 2 patients x 2 studies
    assert len(list((tmp_path / "preds_py" / "predictions").rglob("lesions.csv"))) == 2
