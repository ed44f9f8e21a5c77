"""Report tests: a benchmark output folder as `metstrack benchmark` writes it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from metstrack.benchmark.froc_report import plot_curves


def write_bench_folder(root: Path) -> Path:
    """froc.csv (two arms, regime ``all``), froc_all.png from real curves, config.json."""
    root.mkdir(parents=True, exist_ok=True)
    nan = math.nan
    rows = [
        {"regime": "all", "arm": "stt", "seeds": "0,1,2", "fp_per_scan": 0.9,
         "sensitivity_all": 0.61, "n_lesions_all": 411, "diff_all": 0.1,
         "diff_all_ci_low": -0.05, "diff_all_ci_high": 0.25, "sensitivity_lt10_mm3": 0.32,
         "n_lesions_lt10_mm3": 190, "diff_lt10_mm3": 0.12, "diff_lt10_mm3_ci_low": 0.02,
         "diff_lt10_mm3_ci_high": 0.21, "sensitivity_new": 0.4, "n_lesions_new": 15,
         "diff_new": 0.0, "diff_new_ci_low": -0.2, "diff_new_ci_high": 0.2,
         "train_steps": 1200.0, "train_time_s": 460.0, "train_peak_rss_mb": 1070.0},
        {"regime": "all", "arm": "unet", "seeds": "0,1,2", "fp_per_scan": 0.8,
         "sensitivity_all": 0.51, "n_lesions_all": 411, "diff_all": nan,
         "diff_all_ci_low": nan, "diff_all_ci_high": nan, "sensitivity_lt10_mm3": 0.2,
         "n_lesions_lt10_mm3": 190, "diff_lt10_mm3": nan, "diff_lt10_mm3_ci_low": nan,
         "diff_lt10_mm3_ci_high": nan, "sensitivity_new": 0.4, "n_lesions_new": 15,
         "diff_new": nan, "diff_new_ci_low": nan, "diff_new_ci_high": nan,
         "train_steps": 1200.0, "train_time_s": 420.0, "train_peak_rss_mb": 1080.0},
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "froc.csv", index=False)
    curves = pd.DataFrame(
        [
            {"regime": "all", "arm": arm, "stratum": stratum, "threshold": t,
             "sensitivity": s * (1 - t / 2), "fp_per_scan": 10 * (1 - t)}
            for arm, s in (("stt", 0.8), ("unet", 0.7))
            for stratum in ("all", "lt10_mm3")
            for t in (0.1, 0.5, 0.9)
        ]
    )  # fmt: skip
    plot_curves(curves, root, "all")
    (root / "config.json").write_text(
        json.dumps(
            {
                "config": {"froc": {"fp_per_scan_target": 1.0, "reference": "unet"}},
                "machine": {"git_commit": "a6d4571cbe2c15d1", "cpu_model": "Test CPU",
                            "cpu_cores": 2, "torch_version": "2.13.0+cpu",
                            "date_utc": "2026-12-05 21:03 UTC"},
            }
        )
    )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def bench_folder():
    """:func:`write_bench_folder` (a function: module-scoped fixtures call it too)."""
    return write_bench_folder
