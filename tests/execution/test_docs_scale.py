"""docs/scale.md: the local worked example runs as written; the cluster examples compile."""

from __future__ import annotations

from pathlib import Path

from tests.docs_examples import blocks, run_examples

from metstrack.catalog import Catalog


def test_scale_doc_local_example_runs(cli, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_examples("scale.md", cli) == 3
    assert len(list((tmp_path / "cohort_pp" / "transforms").rglob("*.json"))) == 6
    with Catalog.open(tmp_path / "cohort.db") as catalog:
        assert len(catalog.frame("run_studies")) == 6
    assert (tmp_path / "tracked" / "trajectories.csv").is_file()
    assert "3 patients tracked on 2 workers" in capsys.readouterr().out


def test_scale_doc_cluster_examples_are_valid_python() -> None:
    examples = [body for lang, body in blocks("scale.md") if lang == "py"]
    assert len(examples) == 2  # SLURM and Kubernetes
    for body in examples:
        compile(body, "docs/scale.md", "exec")
    text = Path(__file__).resolve().parents[2].joinpath("docs", "scale.md").read_text()
    assert "SLURMCluster(" in text and "KubeCluster(" in text
