"""`metstrack survival` names clinical patients without imaging and refuses them by default."""

from __future__ import annotations

import pandas as pd

from metstrack.synth.clinical import generate_clinical_only
from metstrack.workflows.synth import write_clinical_only


def test_unknown_patient_is_named_and_refused_unless_allowed(tmp_path, cli):
    root = write_clinical_only(generate_clinical_only(120, seed=4), tmp_path / "c")
    table = root / "tables" / "clinical_patients.csv"
    pats = pd.read_csv(table, dtype=str)
    extra = pats.iloc[[0]].copy()
    extra["PatientID"] = "P99999"
    pd.concat([pats, extra]).to_csv(table, index=False)
    r = cli("survival", "--data", root, "--out", tmp_path / "o")
    assert r.exit_code == 1
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert str(table) in line and "P99999" in line and "--allow-missing-imaging" in line
    assert not (tmp_path / "o").exists()
    r = cli(
        "survival",
        "--data",
        root,
        "--out",
        tmp_path / "o",
        "--allow-missing-imaging",
        "--penalizer",
        "0.1",
    )
    assert r.exit_code == 0, r.output
    assert "P99999" in r.output and "no imaging: 1" in r.output
