"""Pick a model's operating point (threshold, smallest kept component) on validation patients.

Runs ``metstrack predict`` once on the validation patients of a synthetic cohort
(probabilities kept), then re-thresholds the probability maps over a grid of
thresholds and minimum component volumes and scores each setting lesion-wise
against the ground-truth labels (26-connected components; a reference lesion is
found when a predicted component overlaps it; a predicted component that
overlaps no reference lesion is a false positive). The setting with the best
lesion F1 (ties: fewer false positives per scan) is printed and, with
``--write``, stored in the checkpoint's provenance JSON (``threshold``,
``min_volume_mm3``), where ``metstrack predict`` reads its defaults.

Only synthetic validation patients are used: never the test split, never a
real scan. Usage::

    python benchmarks/operating_point.py --checkpoint src/metstrack/data/stt_demo.pt \\
        --prep ckpt_prep --truth ckpt_data --out op --write
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pandas as pd

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_VOLUMES_MM3 = (0.0, 5.0, 10.0, 20.0, 40.0)


def _score(prob: np.ndarray, ref: np.ndarray, voxel_mm3: float, t: float, vmin: float):
    pred = cc3d.connected_components((prob >= t).astype(np.uint8), connectivity=26)
    counts = np.bincount(pred.ravel())
    small = np.flatnonzero(counts * voxel_mm3 < vmin * (1 - 1e-9))
    if small.size:
        pred[np.isin(pred, small[small > 0])] = 0
    refl = cc3d.connected_components(ref.astype(np.uint8), connectivity=26)
    n_ref = int(refl.max())
    found = np.unique(refl[(pred > 0) & (refl > 0)])
    pred_ids = np.unique(pred[pred > 0])
    hit_pred = np.unique(pred[(pred > 0) & (refl > 0)])
    ref_vol = np.bincount(refl.ravel())[1:] * voxel_mm3
    small_ids = np.flatnonzero(ref_vol < 10) + 1
    return {
        "tp": len(found),
        "n_ref": n_ref,
        "fp": len(set(pred_ids) - set(hit_pred)),
        "small_found": len(set(found) & set(small_ids)),
        "n_small": len(small_ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--prep", type=Path, required=True, help="preprocessed cohort (predict input)")
    ap.add_argument("--truth", type=Path, required=True, help="the synthetic cohort (labels)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--write", action="store_true", help="store the choice in the provenance")
    args = ap.parse_args()

    split = pd.read_csv(args.truth / "tables" / "split.csv")
    imaging = pd.read_csv(args.truth / "tables" / "imaging.csv")
    val = imaging[imaging["StudyID"].isin(split.loc[split["val"] == 1, "StudyID"])]
    patients = sorted(val["PatientID"].unique())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "metstrack.cli.main",
            "predict",
            "--checkpoint",
            str(args.checkpoint),
            "--data",
            str(args.prep),
            "--out",
            str(args.out),
            "--patients",
            ",".join(patients),
            "--threshold",
            "0.5",
            "--min-volume",
            "0",
            "--overwrite",
        ],
        check=True,
    )
    studies = []
    for _, row in val.iterrows():
        p, s = row["PatientID"], row["StudyID"]
        prob_img = nib.load(
            args.out / "predictions" / "patientId" / p / "studyId" / s / "prob.nii.gz"
        )
        ref = (
            np.asarray(nib.load(args.truth / "ground_truth" / "labels" / p / f"{s}.nii.gz").dataobj)
            > 0
        )
        voxel = float(abs(np.linalg.det(prob_img.affine[:3, :3])))
        studies.append((np.asarray(prob_img.dataobj, dtype=np.float32), ref, voxel))
    rows = []
    for t in THRESHOLDS:
        for v in MIN_VOLUMES_MM3:
            tot = {"tp": 0, "n_ref": 0, "fp": 0, "small_found": 0, "n_small": 0}
            for prob, ref, voxel in studies:
                for k, val_ in _score(prob, ref, voxel, t, v).items():
                    tot[k] += val_
            sens = tot["tp"] / max(tot["n_ref"], 1)
            prec = tot["tp"] / max(tot["tp"] + tot["fp"], 1)
            f1 = 2 * sens * prec / max(sens + prec, 1e-9)
            rows.append(
                {
                    "threshold": t,
                    "min_volume_mm3": v,
                    "lesion_f1": f1,
                    "sensitivity": sens,
                    "fp_per_scan": tot["fp"] / len(studies),
                    "small_sensitivity": tot["small_found"] / max(tot["n_small"], 1),
                }
            )
    table = pd.DataFrame(rows)
    print(f"{len(patients)} validation patients, {len(studies)} scans")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    best = table.sort_values(["lesion_f1", "fp_per_scan"], ascending=[False, True]).iloc[0]
    print(
        f"chosen: threshold {best.threshold}, min_volume_mm3 {best.min_volume_mm3} "
        f"(lesion F1 {best.lesion_f1:.3f}, sensitivity {best.sensitivity:.3f}, "
        f"<10 mm3 {best.small_sensitivity:.3f}, FP/scan {best.fp_per_scan:.2f})"
    )
    table.to_csv(args.out / "operating_points.csv", index=False)
    if args.write:
        prov_path = args.checkpoint.with_suffix(".json")
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
        prov["threshold"] = float(best.threshold)
        prov["min_volume_mm3"] = float(best.min_volume_mm3)
        prov["operating_point"] = {
            "rule": "best lesion F1 on the synthetic validation patients (ties: fewer FP/scan)",
            "validation_patients": patients,
            **{
                k: float(best[k])
                for k in ("lesion_f1", "sensitivity", "small_sensitivity", "fp_per_scan")
            },
        }
        prov_path.write_text(json.dumps(prov, indent=2) + "\n")
        print(f"wrote {prov_path}")


if __name__ == "__main__":
    main()
