"""Leaderboard tables without training: columns, target verdict, Markdown cells."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from metstrack.benchmark.leaderboard import (
    DEFAULT_BINS,
    columns,
    leaderboard_frame,
    markdown,
    stratum_column,
    target_met,
    write_leaderboard,
)

PROV = {"git_commit": "abc123", "cpu_model": "Test CPU", "cpu_cores": 2, "torch_version": "2.x"}


def _frame(stt: tuple[float, float], unet: tuple[float, float]) -> pd.DataFrame:
    rows = [
        {"model": m, "network": m, "prior_mask": False, "sensitivity_lt10_mm3": s, "fp_per_scan": f}
        for m, (s, f) in (("stt", stt), ("unet", unet))
    ]
    return leaderboard_frame(rows, volume_bins_mm3=DEFAULT_BINS, provenance=PROV)


def test_stratum_columns_put_small_lesions_first():
    assert stratum_column(0, 10) == "sensitivity_lt10_mm3"
    assert stratum_column(10, 100) == "sensitivity_10_100_mm3"
    assert stratum_column(1000, math.inf) == "sensitivity_ge1000_mm3"
    cols = columns(DEFAULT_BINS)
    assert cols.index("sensitivity_lt10_mm3") < cols.index("fp_per_scan") < cols.index("git_commit")


@pytest.mark.parametrize(
    ("stt", "unet", "expected"),
    [
        ((0.6, 1.0), (0.5, 1.0), True),  # more sensitive at equal FP
        ((0.6, 1.5), (0.5, 1.0), False),  # more sensitive but more FP
        ((0.5, 0.5), (0.5, 1.0), False),  # not more sensitive
        ((math.nan, 0.5), (0.5, 1.0), None),  # undefined (no small lesion)
    ],
)
def test_target_verdict(stt, unet, expected):
    assert target_met(_frame(stt, unet)) is expected


def test_written_files_hold_every_row_and_column(tmp_path):
    frame = _frame((0.6, 1.0), (0.5, 1.0))
    paths = write_leaderboard(frame, tmp_path, volume_bins_mm3=DEFAULT_BINS)
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == columns(DEFAULT_BINS) and back["model"].tolist() == ["stt", "unet"]
    md = paths["md"].read_text()
    assert "**met**" in md and "abc123" in md
    assert md == markdown(
        frame, volume_bins_mm3=DEFAULT_BINS, title="metstrack benchmark leaderboard"
    )
