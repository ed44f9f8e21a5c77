"""Survival from measured burden, end to end: image -> segmentation -> tracking -> rate -> Cox.

The published finding (HR 1.27 per cm3/month of burden change) is a statement
about burden *measured* from images. This benchmark runs one seeded synthetic
imaging cohort with a planted survival effect through the whole chain, the way
a user would (the real CLI, one command per step):

    synth -> preprocess -> predict (shipped model unless --checkpoint) -> evaluate
          -> track -> survival --tracking (measured burden)
                   -> survival (the cohort's true burden, ground_truth/burden.csv)

and prints the hazard ratio of the monthly rate of change of total metastasis
volume with its 95% CI from three sources: the measured burden, the true burden
and the planted value. The gap between measured and true is what segmentation
error costs. It also prints the regression-dilution figures that explain the gap:
per patient, the measured rate against the true rate (reliability ratio
lambda = cov(true, measured) / var(measured); under classical measurement error the
measured log-HR is about lambda x the true one), and the model's lesion
sensitivity overall and under 10 mm3 on the same cohort, since missed small
lesions are the main source of rate error.

The planted effect: the synthetic world plants ``--hazard-ratio`` per cm3/month.
At the published 1.27, the rates of a small imaging cohort (SD about 0.3
cm3/month) give an HR per SD near 1.07, far below what a few hundred patients
can resolve; the default plants 4.0 per cm3/month so that the chain can be
checked with a CPU-sized cohort (the units and the comparison are the same).

Usage (prints figures; writes ``<out>/survival_measured.json``; never a test)::

    PYTHONPATH=src python benchmarks/survival_measured.py --out /tmp/surv --patients 80
    PYTHONPATH=src python benchmarks/survival_measured.py --out /tmp/surv --patients 3 \\
        --shape 64 --spacing 2 --max-studies 3   # a smoke run (minutes)

Reruns reuse finished steps (each CLI command resumes), so a killed run can be
restarted with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _run(name: str, argv: list[str], log: list[dict]) -> None:
    """Run one metstrack command in a subprocess; stop with its message when it fails."""
    cmd = [sys.executable, "-m", "metstrack.cli.main", *argv]
    print(f"$ metstrack {' '.join(argv)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    log.append({"step": name, "command": "metstrack " + " ".join(argv), "seconds": seconds})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{name} failed (exit {proc.returncode})")


def _headline(folder: Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    h = s["headline"]
    cox = pd.read_csv(folder / "cox_summary.csv")
    row = cox[cox["covariate"] == "rate_volume_cm3_per_month"].iloc[0]
    return {
        "hr": h["hr_rate_volume_per_cm3_month"],
        "hr_lower_95": h["hr_lower_95"],
        "hr_upper_95": h["hr_upper_95"],
        "hr_per_sd": float(row.get("hr_per_sd", np.nan)),
        "n_patients": int(s["n_patients"]),
        "n_events": int(s["n_events"]),
        "concordance": s["concordance"],
    }


def dilution(measured: pd.DataFrame, true: pd.DataFrame) -> dict:
    """Per-patient rates, measured vs true: reliability ratio, correlation, bias.

    Args:
        measured: ``analysis_table.csv`` of the measured-burden fit.
        true: ``analysis_table.csv`` of the true-burden fit.

    Returns:
        ``lambda`` (cov(true, measured) / var(measured)), ``correlation``,
        ``mean_error_cm3_per_month`` (measured - true), ``sd_true`` and
        ``sd_measured`` (cm3/month) and the number of patients compared.
    """
    col = "rate_volume_cm3_per_month"
    both = measured[["PatientID", col]].merge(
        true[["PatientID", col]], on="PatientID", suffixes=("_measured", "_true")
    )
    m, t = both[f"{col}_measured"].to_numpy(), both[f"{col}_true"].to_numpy()
    var_m = float(np.var(m, ddof=1)) if m.size > 1 else float("nan")
    cov = float(np.cov(t, m, ddof=1)[0, 1]) if m.size > 1 else float("nan")
    return {
        "n_patients": int(m.size),
        "lambda": cov / var_m if var_m > 0 else float("nan"),
        "correlation": float(np.corrcoef(t, m)[0, 1]) if m.size > 1 else float("nan"),
        "mean_error_cm3_per_month": float(np.mean(m - t)) if m.size else float("nan"),
        "sd_true": float(np.std(t, ddof=1)) if t.size > 1 else float("nan"),
        "sd_measured": float(np.sqrt(var_m)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--shape", type=int, default=128)
    ap.add_argument("--spacing", type=float, default=1.5, help="synthetic voxel size (mm)")
    ap.add_argument("--max-studies", type=int, default=4)
    ap.add_argument("--hazard-ratio", type=float, default=4.0, help="planted, per cm3/month")
    ap.add_argument("--checkpoint", type=Path, help="default: the shipped model")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    out = args.out
    d = {
        k: out / k for k in ("data", "prep", "pred", "eval", "track", "surv_measured", "surv_true")
    }
    ckpt = args.checkpoint or REPO / "src" / "metstrack" / "data" / "stt_demo.pt"
    log: list[dict] = []
    t0 = time.perf_counter()
    if not (d["data"] / "tables").is_dir():
        _run("synth", [
            "synth", "--patients", str(args.patients), "--seed", str(args.seed),
            "--shape", str(args.shape), "--spacing", str(args.spacing),
            "--studies-max", str(args.max_studies), "--workers", str(args.workers),
            "--set", f"hazard_ratio={args.hazard_ratio}", "--out", str(d["data"]),
        ], log)  # fmt: skip
    _run("preprocess", [
        "preprocess", "--data", str(d["data"]), "--out", str(d["prep"]),
        "--workers", str(args.workers), "--set", f"spacing_mm={args.spacing}",
    ], log)  # fmt: skip
    _run(
        "predict",
        ["predict", "--checkpoint", str(ckpt), "--data", str(d["prep"]), "--out", str(d["pred"])],
        log,
    )
    _run("evaluate", [
        "evaluate", "--pred", str(d["pred"]), "--ref", str(d["data"]), "--out", str(d["eval"]),
        "--workers", str(args.workers), "--bootstrap", "200",
    ], log)  # fmt: skip
    _run("track", [
        "track", "--data", str(d["data"]), "--masks", str(d["pred"]),
        "--transforms", str(d["prep"]), "--out", str(d["track"]),
    ], log)  # fmt: skip
    surv = ["--covariates", "rate_volume_cm3_per_month", "--no-time-varying"]
    _run("survival (measured burden)", [
        "survival", "--data", str(d["data"]), "--tracking", str(d["track"]),
        "--out", str(d["surv_measured"]), *surv,
    ], log)  # fmt: skip
    _run("survival (true burden)", [
        "survival", "--data", str(d["data"]), "--out", str(d["surv_true"]), *surv,
    ], log)  # fmt: skip

    measured, true = _headline(d["surv_measured"]), _headline(d["surv_true"])
    dil = dilution(
        pd.read_csv(d["surv_measured"] / "analysis_table.csv"),
        pd.read_csv(d["surv_true"] / "analysis_table.csv"),
    )
    ev = json.loads((d["eval"] / "summary.json").read_text())
    head = ev.get("headline", ev)
    result = {
        "cohort": {
            "patients": args.patients, "seed": args.seed, "shape": args.shape,
            "spacing_mm": args.spacing, "max_studies": args.max_studies,
        },
        "checkpoint": str(ckpt),
        "planted_hr_per_cm3_month": args.hazard_ratio,
        "measured": measured,
        "true": true,
        "attenuation_log_hr_ratio": (
            float(np.log(measured["hr"]) / np.log(true["hr"])) if true["hr"] != 1 else float("nan")
        ),
        "dilution": dil,
        "segmentation": {k: head.get(k) for k in (
            "lesion_sensitivity", "small_lesion_sensitivity", "fp_per_scan", "lesion_f1", "dice"
        )},
        "steps": log,
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "survival_measured.json").write_text(json.dumps(result, indent=2) + "\n")

    def fmt(h: dict) -> str:
        return f"{h['hr']:.2f} ({h['hr_lower_95']:.2f}-{h['hr_upper_95']:.2f}), HR/SD {h['hr_per_sd']:.2f}, {h['n_patients']} patients, {h['n_events']} deaths"

    print()
    print(
        f"HR per cm3/month of burden change ({args.patients} synthetic patients, seed {args.seed})"
    )
    print(f"  planted          {args.hazard_ratio:.2f}")
    print(f"  true burden      {fmt(true)}")
    print(f"  measured burden  {fmt(measured)}")
    print(f"  log-HR measured / true: {result['attenuation_log_hr_ratio']:.2f}")
    print(
        f"rates, measured vs true ({dil['n_patients']} patients): reliability ratio "
        f"{dil['lambda']:.2f}, correlation {dil['correlation']:.2f}, mean error "
        f"{dil['mean_error_cm3_per_month']:+.3f} cm3/month (SD true {dil['sd_true']:.3f}, "
        f"measured {dil['sd_measured']:.3f})"
    )
    seg = result["segmentation"]
    print(
        "segmentation: "
        + ", ".join(f"{k} {v:.2f}" for k, v in seg.items() if isinstance(v, (int, float)))
    )
    print(f"wall time {result['wall_seconds'] / 60:.1f} min; {out / 'survival_measured.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
