"""Registration accuracy of ``metstrack preprocess`` on synthetic cohorts with known motion.

Generates a synthetic cohort (``metstrack.synth``; follow-ups misaligned by up
to ``--max-deg`` degrees and ``--max-mm`` mm), preprocesses it, and compares each
recovered ``baseline_to_study`` with the truth in ``ground_truth/transforms.csv``:
the residual of a brain voxel is the distance between where the two transforms
send it. Prints per-study and overall median residuals (target: under 1 mm) and
the time per study. Never run as a test.

    PYTHONPATH=src python benchmarks/registration_accuracy.py --patients 3 --shape 96
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.config import load_config
from metstrack.core.mapping import load_transform
from metstrack.core.spatial import voxel_to_world
from metstrack.io.nifti import read_volume
from metstrack.preprocess.config import PreprocessConfig
from metstrack.preprocess.outputs import brain_mask_path
from metstrack.preprocess.pipeline import preprocess_dataset
from metstrack.preprocess.register import residual_mm
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=3)
    ap.add_argument("--shape", type=int, default=96, help="synthetic grid edge (voxels)")
    ap.add_argument("--spacing", type=float, default=1.0, help="synthetic voxel size (mm)")
    ap.add_argument("--studies-max", type=int, default=4)
    ap.add_argument("--max-deg", type=float, default=7.0)
    ap.add_argument("--max-mm", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--affine", action="store_true", help="add the affine stage")
    ap.add_argument("--set", action="append", default=[], help="PreprocessConfig override")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = ap.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="metstrack-regbench-"))
    synth_cfg = load_config(
        SynthConfig,
        None,
        [
            f"n_patients={args.patients}",
            f"shape={args.shape}",
            f"spacing_mm={args.spacing}",
            f"seed={args.seed}",
            f"max_studies={args.studies_max}",
            f"motion_max_deg={args.max_deg}",
            f"motion_max_mm={args.max_mm}",
        ],
    )
    src = work / "cohort"
    t0 = time.perf_counter()
    generate_cohort(synth_cfg, src)
    t_synth = time.perf_counter() - t0
    overrides = [f"spacing_mm={args.spacing}", *args.set]
    if args.affine:
        overrides.append("through_time.affine=true")
    cfg = load_config(PreprocessConfig, None, overrides)
    out = work / "preprocessed"
    report = preprocess_dataset(src, out, cfg, workers=args.workers)
    truth = pd.read_csv(src / "ground_truth" / "transforms.csv")
    rows = []
    seconds = {(o.patient_id, o.study_id): o.seconds for o in report.outcomes}
    for pid, group in truth.groupby("PatientID"):
        base_sid = group["StudyID"].iloc[0]
        brain = read_volume(brain_mask_path(out, pid, base_sid), dtype=None)
        pts = voxel_to_world(np.argwhere(brain.array > 0), brain.affine)
        for _, r in group.iterrows():
            t_true = np.array([[r[f"m{a}{b}"] for b in range(4)] for a in range(4)])
            est = load_transform(out, pid, r["StudyID"]).baseline_to_study
            err = residual_mm(est, t_true, pts)
            rows.append(
                {
                    "PatientID": pid,
                    "StudyID": r["StudyID"],
                    "true_angle_deg": r["angle_deg"],
                    "true_translation_mm": r["translation_mm"],
                    "before_mm": float(np.median(residual_mm(np.eye(4), t_true, pts))),
                    "median_residual_mm": float(np.median(err)),
                    "p95_residual_mm": float(np.percentile(err, 95)),
                    "seconds": seconds.get((pid, r["StudyID"]), float("nan")),
                }
            )
    df = pd.DataFrame(rows)
    follow = df[df["true_angle_deg"] + df["true_translation_mm"] > 0]
    pd.set_option("display.width", 140)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(
        f"synthetic cohort: {args.patients} patients, {len(df)} studies, "
        f"{args.shape}^3 at {args.spacing} mm, generated in {t_synth:.1f} s"
    )
    print(
        f"preprocess: {report.count('done')} studies in {report.seconds:.1f} s with "
        f"{args.workers} worker(s); {report.seconds / max(1, len(df)):.2f} s per study "
        f"(median {df['seconds'].median():.2f} s of work per study)"
    )
    med = float(follow["median_residual_mm"].median()) if len(follow) else float("nan")
    worst = float(follow["median_residual_mm"].max()) if len(follow) else float("nan")
    print(
        f"follow-ups: median residual over brain voxels {med:.3f} mm "
        f"(worst study {worst:.3f} mm; before registration "
        f"{follow['before_mm'].median():.2f} mm)"
    )
    ok = med < 1.0 and report.count("failed") == 0
    print("PASS: median residual < 1 mm" if ok else "FAIL: median residual >= 1 mm")
    print(f"work folder: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
