"""What does the memory through time contribute? The same trained network, memory on and off.

For finished runs of a ``metstrack benchmark`` folder, this predicts the test
patients again with the memory switched off (``PredictOptions(memory=False)``:
every study segmented as a sequence of one, with the same crop, normalisation,
windows and weights) and compares, at each run's own operating threshold (picked
on its validation patients by the benchmark), test sensitivity for all lesions,
lesions under 10 mm3 and new lesions, and FP/scan, with the paired
patient-level bootstrap interval of (memory on - memory off), pooled over seeds.
It also reports how far the masks move: Dice between the two masks per study
position (the first study has no memory to lose, so its Dice must be 1).

When the memory is used, switching it off must change something; when the
difference is nil, the network has learned to ignore it.

    PYTHONPATH=src python benchmarks/memory_ablation.py --bench runs/benchmark \
        --arms stt,stt_ms --regime all --out runs/benchmark/memory_ablation

Writes ``memory_ablation.csv`` (one row per arm) and ``memory_ablation.md`` to
``--out`` and the memory-off predictions to ``<run>/pred_nomemory`` (reused
when rerun). Prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def find_runs(bench: Path, regime: str, arms: list[str]) -> list[tuple[str, int, Path]]:
    """(arm, seed, run folder) of every finished run of ``arms`` in ``regime``.

    Understands both layouts of ``<bench>/models``: ``<regime>/<arm>/seed<k>`` (several
    seeds or regimes) and ``<arm>`` (one seed, regime ``all``).
    """
    runs = []
    for arm in arms:
        nested = sorted((bench / "models" / regime / arm).glob("seed*"))
        if nested:
            for d in nested:
                m = re.fullmatch(r"seed(\d+)", d.name)
                if m and (d / "froc.json").is_file():
                    runs.append((arm, int(m.group(1)), d))
        elif regime == "all" and (bench / "models" / arm / "froc.json").is_file():
            runs.append((arm, 0, bench / "models" / arm))
    return runs


def _mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def ablate_run(run_dir: Path, data_dir: Path, saved: dict, test_ids: list[str]) -> dict:
    """Predict one run's test patients without memory; its detections and mask agreement."""
    import nibabel as nib
    import torch

    from metstrack.benchmark.froc_report import load_scans, new_lesion_flags, run_scans
    from metstrack.core import schema
    from metstrack.infer.predict import PredictOptions, load_patient_studies, predict_patient
    from metstrack.io.checkpoint import load_checkpoint
    from metstrack.io.nifti import find_nifti
    from metstrack.io.release import read_release
    from metstrack.metrics.froc import operating_threshold

    cfg = saved["config"]
    stage = json.loads((run_dir / "stage.json").read_text(encoding="utf-8"))
    validation, test_on = load_scans(run_dir / "froc.json")
    threshold = operating_threshold(validation, float(cfg["froc"]["fp_per_scan_target"]))
    model, mcfg = load_checkpoint(stage["best_ckpt"], map_location="cpu")
    torch.set_num_threads(max(1, int(cfg["budget"].get("threads", 1))))
    pred = cfg["predict"]
    options = PredictOptions(
        overlap=float(pred["overlap"]),
        threshold=float(threshold),
        sw_batch_size=int(pred.get("sw_batch_size", 2)),
        tta_flips=bool(pred.get("tta_flips", False)),
        precision=pred.get("precision", "fp32"),  # what the run's own predictions used
        memory_format=pred.get("memory_format", "ncdhw"),
        memory=False,
        skip_existing=True,
    )
    cohort = read_release(data_dir)
    root_off = run_dir / "pred_nomemory"
    studies_of = {}
    for pid in test_ids:
        patient = cohort.patient(pid)
        studies = load_patient_studies(patient, tuple(mcfg.modalities))
        predict_patient(model, pid, studies, root_off, options=options)
        studies_of[pid] = [s.study_id for s in patient.studies]
    test_off = run_scans(
        data_dir,
        root_off,
        studies_of,
        thresholds=tuple(cfg["froc"]["thresholds"]),
        new_lesions=new_lesion_flags(data_dir),
        min_iou=float(cfg["froc"].get("min_iou", 0.0)),
    )
    dice_by_position: dict[int, list[float]] = {}
    for pid, sids in studies_of.items():
        for k, sid in enumerate(sids):
            probs = []
            for root in (run_dir / "pred", root_off):
                path = find_nifti(schema.prediction_dir(root, pid, sid), "prob")
                probs.append(np.asarray(nib.load(path).dataobj) >= threshold)
            dice_by_position.setdefault(k, []).append(_mask_dice(*probs))
    return {
        "threshold": threshold,
        "test_on": test_on,
        "test_off": test_off,
        "dice_by_position": dice_by_position,
    }


def compare(results: dict[str, list[dict]], n_bootstrap: int, seed: int) -> pd.DataFrame:
    """One row per arm: sensitivities and FP/scan with and without memory, the paired CIs."""
    from metstrack.benchmark.froc_report import STRATA
    from metstrack.metrics.froc import at_operating_point, paired_bootstrap_difference

    rows = []
    for arm, runs in results.items():
        on = [(r["test_on"], r["threshold"]) for r in runs]
        off = [(r["test_off"], r["threshold"]) for r in runs]
        row: dict[str, object] = {
            "arm": arm,
            "seeds": ",".join(str(r["seed"]) for r in runs),
            "thresholds": ",".join(f"{r['threshold']:g}" for r in runs),
            "fp_per_scan_memory": at_operating_point(on)[1],
            "fp_per_scan_no_memory": at_operating_point(off)[1],
        }
        for name, stratum in STRATA.items():
            row[f"sens_{name}_memory"] = at_operating_point(on, stratum)[0]
            row[f"sens_{name}_no_memory"] = at_operating_point(off, stratum)[0]
            d = paired_bootstrap_difference(
                on, off, stratum=stratum, n_bootstrap=n_bootstrap, seed=seed
            )
            row[f"diff_{name}"], row[f"diff_{name}_ci_low"], row[f"diff_{name}_ci_high"] = (
                d.difference,
                d.ci_low,
                d.ci_high,
            )
        positions: dict[int, list[float]] = {}
        for r in runs:
            for k, v in r["dice_by_position"].items():
                positions.setdefault(int(k), []).extend(v)
        row["mask_dice_first_study"] = float(np.mean(positions.get(0, [np.nan])))
        later = [v for k, vs in positions.items() if k > 0 for v in vs]
        row["mask_dice_later_studies"] = float(np.mean(later)) if later else float("nan")
        row["mask_dice_later_min"] = float(np.min(later)) if later else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, regime: str) -> str:
    """The comparison as a Markdown table."""
    from metstrack.benchmark.froc_report import format_cell

    def diff(r: pd.Series, name: str) -> str:
        return (
            f"{r[f'diff_{name}']:+.2f} [{r[f'diff_{name}_ci_low']:+.2f}, "
            f"{r[f'diff_{name}_ci_high']:+.2f}]"
        )

    head = [
        "arm", "seeds", "FP/scan on / off", "sens. all on / off", "diff", "sens. < 10 mm3 on / off",
        "diff", "sens. new on / off", "diff", "mask Dice, study 1", "mask Dice, later (mean, min)",
    ]  # fmt: skip
    lines = [
        f"Memory on vs off, regime `{regime}`, test patients, each run at its own "
        "validation-picked threshold; diff = on - off with a paired patient-level bootstrap "
        "95% interval, seeds pooled.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for _, r in table.iterrows():
        cells = [
            str(r["arm"]),
            str(r["seeds"]),
            f"{format_cell(r['fp_per_scan_memory'])} / {format_cell(r['fp_per_scan_no_memory'])}",
            f"{format_cell(r['sens_all_memory'])} / {format_cell(r['sens_all_no_memory'])}",
            diff(r, "all"),
            f"{format_cell(r['sens_lt10_mm3_memory'])} / {format_cell(r['sens_lt10_mm3_no_memory'])}",
            diff(r, "lt10_mm3"),
            f"{format_cell(r['sens_new_memory'])} / {format_cell(r['sens_new_no_memory'])}",
            diff(r, "new"),
            format_cell(r["mask_dice_first_study"], 3),
            f"{format_cell(r['mask_dice_later_studies'], 3)}, "
            f"{format_cell(r['mask_dice_later_min'], 3)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, required=True, help="a metstrack benchmark --out folder")
    ap.add_argument("--arms", default="stt,stt_ms", help="comma-separated arms with memory")
    ap.add_argument("--regime", default="all", help="label regime (all or radiosurgery)")
    ap.add_argument(
        "--seeds", default="", help="comma-separated seeds (default: every finished one)"
    )
    ap.add_argument("--out", type=Path, required=True, help="where the tables go")
    ap.add_argument("--n-bootstrap", type=int, default=2000)
    args = ap.parse_args(argv)

    from metstrack.core.atomic import write_csv_atomic, write_text_atomic
    from metstrack.io.release import read_release

    saved = json.loads((args.bench / "config.json").read_text(encoding="utf-8"))
    data_dir = args.bench / "cohort"
    test_ids = [p.patient_id for p in read_release(data_dir).split("test")]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    runs = find_runs(args.bench, args.regime, arms)
    if args.seeds.strip():
        wanted = {int(s) for s in args.seeds.split(",") if s.strip()}
        runs = [r for r in runs if r[1] in wanted]
    if not runs:
        print(f"{args.bench}: no finished run of {arms} in regime {args.regime}", file=sys.stderr)
        return 1
    results: dict[str, list[dict]] = {}
    for arm, seed, run_dir in runs:
        print(
            f"{arm} seed {seed}: predicting {len(test_ids)} test patients without memory",
            flush=True,
        )
        res = ablate_run(run_dir, data_dir, saved, test_ids)
        results.setdefault(arm, []).append({**res, "seed": seed})
    table = compare(results, args.n_bootstrap, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(args.out / "memory_ablation.csv", table)
    md = markdown(table, args.regime)
    write_text_atomic(args.out / "memory_ablation.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
