"""The worked examples of docs/models.md run as written."""

from __future__ import annotations

from pathlib import Path

from tests.docs_examples import run_examples


def test_models_doc_examples_run(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_examples("models.md", cli) >= 2
    assert (tmp_path / "stt.ckpt").is_file()
