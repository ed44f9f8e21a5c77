"""The worked examples of docs/preprocess.md and docs/catalog.md, executed as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd

from metstrack.catalog import Catalog

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks(name: str) -> list[tuple[str, str]]:
    return _BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))


def _run_console(cli, text: str) -> int:
    n = 0
    for line in text.splitlines():
        if line.startswith("$ metstrack "):
            res = cli(*shlex.split(line)[2:])
            assert res.exit_code == 0, f"{line}\n{res.output}"
            n += 1
    return n


def test_docs_worked_examples_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for lang, text in _blocks("preprocess.md"):
        if lang == "toml":
            first = text.splitlines()[0]
            name = re.match(r"# (\S+\.toml)", first).group(1)
            Path(name).write_text(text, encoding="utf-8")
    for lang, text in _blocks("preprocess.md"):
        if lang == "console":
            ran += _run_console(cli, text)
        elif lang == "python":
            exec(compile(text, "docs/preprocess.md", "exec"), {})
            ran += 1
    assert Path("cohort_pp/transforms").is_dir()
    assert Path("cohort_pp/preprocess/report.json").is_file()
    for lang, text in _blocks("catalog.md"):
        if lang == "console":
            ran += _run_console(cli, text)
        elif lang == "python":
            exec(compile(text, "docs/catalog.md", "exec"), {})
            ran += 1
    assert ran == 8
    assert len(pd.read_csv("studies.csv")) == 2
    assert len(pd.read_parquet("outputs.parquet")) > 0
    with Catalog.open("cohort.db") as cat:
        assert (
            cat.done_studies("preprocess")
            == cat.done_studies("predict")
            == {
                "P00001_S01",
                "P00001_S02",
            }
        )
        assert cat.integrity_problems() == []


def test_catalog_cli_errors(cli, tmp_path):
    res = cli("catalog", tmp_path / "none.db")
    assert res.exit_code == 1 and "not found" in res.output
    Catalog.open(tmp_path / "c.db").close()
    res = cli("catalog", tmp_path / "c.db", "export", "studys", "--out", tmp_path / "x.csv")
    assert res.exit_code == 1 and "did you mean 'studies'" in res.output
    res = cli("catalog", tmp_path / "c.db", "export")
    assert res.exit_code == 2
    res = cli("catalog", tmp_path / "c.db", "drop")
    assert res.exit_code == 2


def test_preprocess_cli_errors(cli, tmp_path):
    res = cli("preprocess", "--data", tmp_path / "missing", "--out", tmp_path / "out")
    assert res.exit_code == 1 and "missing" in res.output
    res = cli("preprocess", "--data", tmp_path, "--out", tmp_path / "o", "--set", "spacing=2")
    assert res.exit_code == 1 and "did you mean 'spacing_mm'" in res.output


def test_preprocess_cli_flags_are_recorded(cli, one_patient_cohort, tmp_path):
    import json

    src, _, _ = one_patient_cohort
    out = tmp_path / "pp"
    args = (
        "preprocess",
        "--data",
        src,
        "--out",
        out,
        "--no-brain-mask",
        "--n4",
        "--affine",
        "--set",
        "spacing_mm=2.5",
        "--set",
        "through_time.shrink_factors=[2,1]",
        "--set",
        "through_time.smoothing_sigmas_mm=[2.0,0.0]",
        "--set",
        "register_within_study=false",
    )
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "2 done" in res.output
    cfg = json.loads((out / "preprocess" / "config.json").read_text())["config"]
    assert (cfg["brain_mask"], cfg["n4"], cfg["through_time"]["affine"]) == (False, True, True)
    prov = json.loads((out / "preprocess" / "provenance" / "P00" / "P00S2.json").read_text())
    steps = {s["step"]: s for s in prov["steps"]}
    assert steps["register_through_time"]["stages"] == ["rigid", "affine"]
    assert steps["brain_mask"]["method"].startswith("nonzero")
    assert "n4" in steps
    again = cli(*args)
    assert again.exit_code == 0 and "2 already finished" in " ".join(again.output.split())
    other = cli("preprocess", "--data", src, "--out", out)  # other settings, same folder
    assert other.exit_code == 1 and "another configuration" in " ".join(other.output.split())
