"""`metstrack survival`: the documented example, outputs and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from metstrack.synth.clinical import generate_clinical_only
from metstrack.workflows.synth import write_clinical_only

DOC = Path(__file__).resolve().parents[2] / "docs" / "survival.md"


def _doc_commands() -> list[list[str]]:
    block = re.search(r"## Worked example\n\n```bash\n(.*?)```", DOC.read_text(), re.S).group(1)
    return [ln.split()[1:] for ln in block.splitlines() if ln.startswith("metstrack ")]


def test_documented_example_runs(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmds = _doc_commands()
    assert [c[0] for c in cmds] == ["synth", "survival"]
    synth = [("400" if a == "1429" else a) for a in cmds[0]]  # smaller cohort, same command
    assert cli(*synth).exit_code == 0
    r = cli(*cmds[1])
    assert r.exit_code == 0, r.output
    assert "rate_volume_cm3_per_month" in r.output and "concordance" in r.output
    s = json.loads((tmp_path / "survival" / "summary.json").read_text())
    assert s["n_input_patients"] == 400
    assert s["landmark"] and s["time_varying"]
    assert (tmp_path / "survival" / "km_rate_of_change.png").stat().st_size > 1000


def test_bad_inputs_exit_1_with_a_clear_message(tmp_path, cli):
    root = write_clinical_only(generate_clinical_only(60, seed=1), tmp_path / "c")
    r = cli("survival", "--data", root, "--out", tmp_path / "o", "--tracking", tmp_path / "none")
    assert r.exit_code == 1 and "burden table not found" in r.output
    pats = pd.read_csv(root / "tables" / "clinical_patients.csv", dtype=str)
    pats["death"] = "0"
    pats.to_csv(root / "tables" / "clinical_patients.csv", index=False)
    r = cli("survival", "--data", root, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "no events" in r.output
    pats.loc[2, "kps"] = "abc"
    pats.to_csv(root / "tables" / "clinical_patients.csv", index=False)
    r = cli("survival", "--data", root, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "clinical_patients.csv" in r.output and "line 4" in r.output


def test_usage_errors_exit_2(tmp_path, cli):
    root = write_clinical_only(generate_clinical_only(30, seed=2), tmp_path / "c")
    r = cli("survival", "--data", root, "--out", tmp_path / "o", "--groups", "quartiles")
    assert r.exit_code in (1, 2) and "quartiles" in r.output
    r = cli("survival", "--data", root, "--out", tmp_path / "o", "--covariates", "kpss")
    assert "did you mean 'kps'" in r.output
