"""The worked examples of docs/pretrain.md, docs/search.md and docs/ablate.md, run as written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tests.docs_examples import run_examples

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_pretrain_docs_example(cli, workdir):
    assert run_examples("pretrain.md", cli) == 4  # three commands and the Python block
    log = pd.read_csv(workdir / "pre" / "loss_log.csv")
    assert len(log) == 3 and log["order_loss"].notna().all()
    report = json.loads((workdir / "ft" / "init_weights.json").read_text())
    assert "convlstm.conv.weight" in report["unexpected"]
    assert any(k.startswith("final_conv.weight") for k in report["shape_mismatch"])


def test_search_docs_example(cli, workdir):
    assert run_examples("search.md", cli) == 3
    trials = pd.read_csv(workdir / "search" / "trials.csv")
    assert len(trials) == 2
    assert json.loads((workdir / "best" / "result.json").read_text())["global_step"] == 1


def test_ablate_docs_example_two_variants_give_one_table(cli, workdir):
    assert run_examples("ablate.md", cli) == 2
    out = workdir / "ablation"
    table = pd.read_csv(out / "ablation.csv")
    assert list(dict.fromkeys(table["variant"])) == ["base", "no-memory"]
    assert set(table["metric"]) == {
        "lesion_f1",
        "lesion_sensitivity",
        "small_sensitivity",
        "fp_per_scan",
        "dice",
    }
    assert (table[table.variant == "base"]["diff"] == 0).all()
    nm = table[table.variant == "no-memory"].set_index("metric")
    base = table[table.variant == "base"].set_index("metric")
    for m in ("fp_per_scan", "lesion_f1"):
        assert nm.loc[m, "diff"] == pytest.approx(nm.loc[m, "value"] - base.loc[m, "value"])
    md = (out / "ablation.md").read_text()
    assert "| no-memory |" in md and "| base |" in md and "Δ lesion_f1 vs base" in md
    for v in ("base", "no-memory"):
        assert (out / "variants" / v / "checkpoints" / "best.ckpt").is_file()
        assert len(pd.read_csv(out / "variants" / v / "evaluation.csv")) == nm["n_studies"].iloc[0]
    cfgs = json.loads((out / "ablation.json").read_text())["variants"]
    assert cfgs["no-memory"]["model"]["name"] == "unet"
    assert cfgs["no-memory"]["trainer"] == cfgs["base"]["trainer"]
