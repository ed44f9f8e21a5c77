"""Does the survival analysis recover the planted hazard ratio?

On synthetic clinical-only cohorts at the published size (1,429 patients) with
a planted hazard ratio of 1.27 per cm3/month of the monthly rate of change of
total metastasis volume, fit the default Cox model (rate + age, KPS,
extracranial disease, histology) for many seeds and print the coverage of the
95% CI, the bias of the mean estimate and the run time.

Optionally, on an imaging cohort, print the hazard ratio computed from tracked
predictions next to the one from tracked ground truth:

    python benchmarks/survival_validity.py --seeds 50
    python benchmarks/survival_validity.py --seeds 0 --data COHORT \\
        --gt-tracking TRACK_GT --pred-tracking TRACK_PRED
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.survival.cox import CoxAnalysis
from metstrack.survival.table import build_analysis_table, clinical_frame
from metstrack.synth.clinical import generate_clinical_only
from metstrack.workflows.survival import PRIMARY


def one_seed(seed: int, n: int) -> tuple[float, float, float, float]:
    """(hr, lower, upper, seconds) for one synthetic cohort."""
    t0 = time.perf_counter()
    cohort = generate_clinical_only(n, seed=seed)
    tables = cohort.tables
    clin = tables.patients.copy()
    table = build_analysis_table(clin, tables.burden)
    cox = CoxAnalysis().fit(table.frame, covariates=table.covariates)
    hr, lo, hi = cox.hazard_ratio(PRIMARY)
    return hr, lo, hi, time.perf_counter() - t0


def imaging_comparison(data: Path, gt: Path, pred: Path) -> None:
    """Print the HR from tracked predictions next to the HR from tracked ground truth."""
    from metstrack.io.release import read_clinical_tables

    patients, events, _ = read_clinical_tables(data)
    clin = clinical_frame(patients)
    for name, folder in (("ground truth", gt), ("predictions", pred)):
        burden = pd.read_csv(folder / "burden.csv", dtype={"PatientID": str})
        table = build_analysis_table(clin, burden, events=tuple(events))
        try:
            cox = CoxAnalysis(penalizer=0.1).fit(table.frame, covariates=[PRIMARY])
            hr, lo, hi = cox.hazard_ratio(PRIMARY)
            print(
                f"{name:>13}: HR {hr:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
                f"{cox.n_patients_} patients, {cox.n_events_} deaths"
            )
        except Exception as exc:  # noqa: BLE001 - small imaging cohorts may not support a fit
            print(f"{name:>13}: no fit ({exc})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--patients", type=int, default=1429)
    ap.add_argument("--hr", type=float, default=1.27, help="planted HR (the generator's default)")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--gt-tracking", type=Path)
    ap.add_argument("--pred-tracking", type=Path)
    args = ap.parse_args()
    if args.seeds:
        t0 = time.perf_counter()
        rows = [one_seed(s, args.patients) for s in range(args.seeds)]
        hr, lo, hi, sec = (np.array(c) for c in zip(*rows, strict=True))
        cover = np.mean((lo <= args.hr) & (args.hr <= hi))
        log_bias = np.mean(np.log(hr)) - np.log(args.hr)
        print(f"seeds: {args.seeds}, patients per cohort: {args.patients}, planted HR {args.hr}")
        print(
            f"mean HR estimate: {np.mean(hr):.4f} (relative bias {np.mean(hr) / args.hr - 1:+.2%}; "
            f"mean log-HR bias {log_bias:+.4f})"
        )
        print(f"95% CI coverage: {cover:.0%} ({int(cover * args.seeds)}/{args.seeds})")
        print(f"median CI: {np.median(lo):.3f}-{np.median(hi):.3f}")
        print(
            f"time: {time.perf_counter() - t0:.1f} s total, {np.mean(sec):.2f} s per cohort "
            "(generate + table + fit)"
        )
    if args.data and args.gt_tracking and args.pred_tracking:
        imaging_comparison(args.data, args.gt_tracking, args.pred_tracking)


if __name__ == "__main__":
    main()
