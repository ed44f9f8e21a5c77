"""The report's survival section names the cohort the analysis was fitted on."""

from __future__ import annotations

import json
from pathlib import Path

from metstrack.report.build import survival_cohort


def _survival(folder: Path, data: Path, burden: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"inputs": {"data": str(data), "burden": burden}})
    )
    return folder


def test_a_fit_on_the_reports_own_cohort_says_so(tmp_path) -> None:
    data = tmp_path / "data"
    sv = _survival(tmp_path / "sv", data, str(tmp_path / "tracking" / "burden.csv"))
    header, note = survival_cohort(data, sv)
    assert header == "Survival of this cohort" and "measured by metstrack track" in note


def test_a_fit_on_another_cohort_is_labelled_separate(tmp_path) -> None:
    sv = _survival(
        tmp_path / "sv", tmp_path / "clinical", str(tmp_path / "clinical/ground_truth/burden.csv")
    )
    header, note = survival_cohort(tmp_path / "data", sv)
    assert header == "Survival: a separate cohort"
    assert "not of the imaging cohort above" in note and "synthetic ground truth" in note


def test_an_unrecorded_cohort_is_not_claimed(tmp_path) -> None:
    (tmp_path / "sv").mkdir()
    header, note = survival_cohort(tmp_path / "data", tmp_path / "sv")
    assert header == "Survival" and "not recorded" in note
