"""Tracking accuracy on synthetic cohorts with ground-truth lesion identities.

Generates a synthetic cohort (``metstrack.workflows.synth.generate_cohort``) or
reads an existing one (``--data``), tracks the ground-truth masks of every
patient (each follow-up mapped to its baseline grid with the true
``ground_truth/transforms.csv``; ``--no-motion`` generates a cohort without
misalignment instead) and scores the tracked IDs against the true persistent
IDs of ``ground_truth/instances`` with
:func:`metstrack.tracking.accuracy.tracking_accuracy`.

Target: link accuracy >= 98% and identity-switch rate <= 1% on ground truth.

With ``--pred DIR`` (a predictions root,
``DIR/predictions/patientId/<P>/studyId/<S>/mask.nii.gz`` on each study's
native grid) the model's predictions are tracked and scored the same way, and
their monthly rate of change (cm3/month) is compared with the ground truth's
(Pearson correlation and mean absolute difference over patients with a defined
rate). Prints figures; never run as a test.

    python benchmarks/tracking_accuracy.py --patients 20 --seed 0 --shape 64
    python benchmarks/tracking_accuracy.py --data cohort --pred runs/stt/pred
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metstrack.core import schema
from metstrack.core.rate import monthly_rate_of_change
from metstrack.core.spatial import resample_volume
from metstrack.io.nifti import find_nifti, read_label
from metstrack.io.tracks import GT_INSTANCES_DIR, GT_TRANSFORMS, read_transforms_csv
from metstrack.tracking.accuracy import TrackingAccuracy, combine_accuracy, tracking_accuracy
from metstrack.tracking.config import TrackConfig
from metstrack.tracking.tracker import track_patient
from metstrack.types import Volume

LINK_TARGET = 0.98
SWITCH_TARGET = 0.01


def _to_baseline(vol: Volume, base: Volume, transform: np.ndarray | None) -> Volume:
    if transform is None or (np.allclose(transform, np.eye(4)) and vol.same_grid(base)):
        return vol
    return resample_volume(vol, base, transform=transform, order=0)


def _score_patient(patient, masks_native, true_native, transforms, cfg):
    """Track one patient's masks; score against truth on the baseline grid."""
    tfs = [transforms.get((patient.patient_id, s.study_id)) for s in patient.studies]
    if tfs[0] is None:
        tfs[0] = np.eye(4)
    tfs = [np.eye(4) if t is None else t for t in tfs]
    days = [s.days_from_baseline - patient.studies[0].days_from_baseline for s in patient.studies]
    res = track_patient(
        masks_native,
        days,
        config=cfg,
        patient_id=patient.patient_id,
        study_ids=[s.study_id for s in patient.studies],
        baseline_to_study=tfs,
    )
    base = true_native[0]
    truth = [_to_baseline(v, base, t).array for v, t in zip(true_native, tfs, strict=True)]
    return res, tracking_accuracy(res.tracked_maps, truth)


def _true_rate(patient, true_native) -> float:
    days = [s.days_from_baseline for s in patient.studies]
    vols = [float((v.array > 0).sum()) * v.voxel_volume_mm3 for v in true_native]
    return monthly_rate_of_change(days, vols).value


def _agreement(a: list[float], b: list[float]) -> tuple[float, float, int]:
    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan, math.nan, int(len(x))
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else math.nan
    return r, float(np.mean(np.abs(x - y))), int(len(x))


def _line(name: str, acc: TrackingAccuracy) -> str:
    return (
        f"{name:<12} link accuracy {acc.link_accuracy:7.2%} ({acc.n_correct_links}/"
        f"{acc.n_correspondences})  identity switches {acc.identity_switch_rate:6.2%} "
        f"({acc.n_identity_switches})  link precision {acc.link_precision:7.2%}  "
        f"missed obs {acc.n_missed_observations}/{acc.n_observations}  "
        f"false merges {acc.n_false_merges}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="existing synthetic cohort (else one is generated)")
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--no-motion", action="store_true", help="generate without misalignment")
    ap.add_argument("--pred", type=Path, help="predictions root to score as well")
    ap.add_argument("--set", action="append", default=[], help="tracking setting key=value")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    from metstrack.config import load_config
    from metstrack.io.release import read_release

    cfg = load_config(TrackConfig, None, args.set)
    tmp = None
    data = args.data
    t0 = time.perf_counter()
    if data is None:
        from metstrack.synth.config import SynthConfig
        from metstrack.workflows.synth import generate_cohort

        extra = {"motion_max_deg": 0.0, "motion_max_mm": 0.0} if args.no_motion else {}
        tmp = tempfile.TemporaryDirectory(prefix="metstrack-trackbench-")
        data = Path(tmp.name) / "cohort"
        generate_cohort(
            SynthConfig(n_patients=args.patients, seed=args.seed, shape=args.shape, **extra), data
        )
    t_gen = time.perf_counter() - t0
    cohort = read_release(data)
    tf_path = data / schema.GROUND_TRUTH_DIR / GT_TRANSFORMS
    transforms = read_transforms_csv(tf_path) if tf_path.is_file() else {}

    gt_accs, pred_accs = [], []
    rate_true, rate_gt_tracked, rate_pred = [], [], []
    n_studies = 0
    t1 = time.perf_counter()
    for patient in cohort.patients:
        gt_dir = data / schema.GROUND_TRUTH_DIR / GT_INSTANCES_DIR / patient.patient_id
        true_native = [
            read_label(
                find_nifti(gt_dir, s.study_id) or gt_dir / f"{s.study_id}.nii.gz", binary=False
            )
            for s in patient.studies
        ]
        n_studies += len(true_native)
        res, acc = _score_patient(patient, true_native, true_native, transforms, cfg)
        gt_accs.append(acc)
        rate_true.append(_true_rate(patient, true_native))
        rate_gt_tracked.append(
            monthly_rate_of_change(
                res.burden["days_from_baseline"], res.burden["total_volume_mm3"]
            ).value
        )
        if args.pred is not None:
            pm = []
            for s in patient.studies:
                p = find_nifti(
                    schema.prediction_dir(args.pred, patient.patient_id, s.study_id),
                    schema.PREDICTION_MASK,
                )
                if p is None:
                    print(
                        f"missing prediction for {patient.patient_id}/{s.study_id}", file=sys.stderr
                    )
                    return 1
                pm.append(read_label(p, binary=False))
            pres, pacc = _score_patient(patient, pm, true_native, transforms, cfg)
            pred_accs.append(pacc)
            rate_pred.append(
                monthly_rate_of_change(
                    pres.burden["days_from_baseline"], pres.burden["total_volume_mm3"]
                ).value
            )
    t_track = time.perf_counter() - t1

    gt = combine_accuracy(gt_accs)
    print(
        f"cohort {data}: {len(cohort.patients)} patients, {n_studies} studies"
        f"{f' (generated in {t_gen:.1f} s)' if tmp else ''}; tracking {t_track:.1f} s"
    )
    print(_line("ground truth", gt))
    passed = gt.link_accuracy >= LINK_TARGET and gt.identity_switch_rate <= SWITCH_TARGET
    print(
        f"target: link accuracy >= {LINK_TARGET:.0%} and identity switches <= "
        f"{SWITCH_TARGET:.0%}: {'PASS' if passed else 'FAIL'}"
    )
    r, mad, n = _agreement(rate_true, rate_gt_tracked)
    print(
        f"rate of change, tracked ground truth vs true volumes: r = {r:.4f}, "
        f"mean |diff| = {mad:.5f} cm3/month over {n} patients"
    )
    figures = {
        "ground_truth": gt.as_dict(),
        "passed": passed,
        "rate_gt_tracked_vs_true": {
            "pearson_r": r,
            "mean_abs_diff_cm3_per_month": mad,
            "n_patients": n,
        },
    }
    if args.pred is not None:
        pa = combine_accuracy(pred_accs)
        print(_line("predictions", pa))
        r, mad, n = _agreement(rate_true, rate_pred)
        print(
            f"rate of change, predictions vs ground truth: r = {r:.4f}, "
            f"mean |diff| = {mad:.5f} cm3/month over {n} patients"
        )
        figures["predictions"] = pa.as_dict()
        figures["rate_pred_vs_true"] = {
            "pearson_r": r,
            "mean_abs_diff_cm3_per_month": mad,
            "n_patients": n,
        }
    if args.json:
        from metstrack.core.atomic import write_json_atomic

        write_json_atomic(args.json, figures)
    if tmp is not None:
        tmp.cleanup()
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
