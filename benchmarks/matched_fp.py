"""Small-lesion sensitivity of one benchmark model at the false-positive rate of another.

The leaderboard compares models at one probability threshold (0.5). This
script re-thresholds a model's saved probability maps
(``<out>/models/<model>/pred/predictions/.../prob.nii.gz``) at a range of
thresholds, evaluates each on the benchmark's test patients with the
benchmark's evaluation settings, and prints sensitivity per stratum and FP per
scan, marking the lowest threshold at which the model has no more false
positives per scan than the reference row (e.g. STT at the FP rate of the
no-memory ``unet``). Prints figures; never run as a test.

    PYTHONPATH=src python benchmarks/matched_fp.py --out runs/benchmark --model stt --reference unet
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a finished benchmark folder")
    ap.add_argument("--model", default="stt")
    ap.add_argument("--reference", default="unet")
    ap.add_argument(
        "--thresholds", default="0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.98", help="comma-separated"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from metstrack.benchmark.config import BenchmarkConfig
    from metstrack.benchmark.runner import evaluate_model
    from metstrack.config import from_dict
    from metstrack.core import schema
    from metstrack.io.nifti import read_volume, write_volume
    from metstrack.io.release import read_release
    from metstrack.types import Volume

    saved = json.loads((args.out / "config.json").read_text())
    cfg = from_dict(BenchmarkConfig, saved["config"])
    cfg = replace(cfg, evaluation=replace(cfg.evaluation, n_bootstrap=0))
    data = args.out / "cohort"
    cohort = read_release(data)
    test = [p.patient_id for p in cohort.split("test")]
    board = json.loads((args.out / "leaderboard.json").read_text())["rows"]
    ref_fp = float(next(r["fp_per_scan"] for r in board if r["model"] == args.reference))
    pred = args.out / "models" / args.model / "pred"
    rows = []
    with tempfile.TemporaryDirectory(prefix="metstrack-matchedfp-") as tmp:
        for t in [float(x) for x in args.thresholds.split(",")]:
            root = Path(tmp) / f"t{t:g}"
            for pid in test:
                for st in cohort.patient(pid).studies:
                    src = schema.prediction_dir(pred, pid, st.study_id) / "prob.nii.gz"
                    prob = read_volume(src)
                    mask = Volume((prob.array >= t).astype(np.uint8), prob.affine)
                    dst = schema.prediction_dir(root, pid, st.study_id) / "mask.nii.gz"
                    write_volume(mask, dst)
            ev = evaluate_model(cfg, data, root, test, Path(tmp) / f"eval{t:g}")
            s = ev.summary
            row = {
                "threshold": t,
                "fp_per_scan": s.metric("fp_per_scan").value,
                "sensitivity_lt10_mm3": s.metric("sensitivity_[0,10)").value,
                "lesion_sensitivity": s.metric("lesion_sensitivity").value,
                "lesion_f1": s.metric("lesion_f1").value,
            }
            rows.append(row)
    matched = next((r for r in rows if r["fp_per_scan"] <= ref_fp), None)
    print(f"{args.model}: thresholds vs FP/scan ({args.reference} at 0.5: {ref_fp:.3f} FP/scan)")
    for r in rows:
        mark = "  <- matched" if r is matched else ""
        print(
            f"  t={r['threshold']:<5g} FP/scan {r['fp_per_scan']:6.3f}  sens<10mm3 "
            f"{r['sensitivity_lt10_mm3']:.3f}  sens all {r['lesion_sensitivity']:.3f}  "
            f"F1 {r['lesion_f1']:.3f}{mark}"
        )
    if args.json:
        args.json.write_text(json.dumps({"reference_fp_per_scan": ref_fp, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
