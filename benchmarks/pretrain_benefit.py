"""Does self-supervised pretraining help when most studies are unlabelled?

On a synthetic cohort whose release flags a lesion label on only a fraction of
the studies (default 30 %, as in NYUMets-Brain), two arms get the **same total
CPU budget** (process CPU seconds, data preparation included):

* ``scratch``: STT trained from random initialisation for the whole budget;
* ``pretrain``: ``metstrack pretrain`` (restoration, optionally + order) on
  every non-test study for ``--pretrain-share`` of the budget, then
  fine-tuning from its weights for whatever is left.

Both keep their best validation checkpoint and are evaluated on the test
patients against every reference mask on disk: sensitivity for lesions under
10 mm3, false positives per scan, lesion F1 and Dice, with patient-bootstrap
intervals and paired intervals on the difference (pretrain - scratch).

Usage (about 10 minutes on a laptop CPU with the defaults)::

    PYTHONPATH=src python benchmarks/pretrain_benefit.py --out /tmp/pretrain_benefit

Prints the figures and writes ``results.json``, ``comparison.csv`` and
``comparison.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

from metstrack.io.release import read_release
from metstrack.synth.config import SynthConfig
from metstrack.train.ablate import compare_variants, evaluate_run, markdown_table
from metstrack.train.api import train
from metstrack.train.config import load_train_config
from metstrack.train.pretrain import pretrain
from metstrack.train.pretrain_config import load_pretrain_config
from metstrack.train.ssl_budget import CpuTimeBudget
from metstrack.workflows.synth import generate_cohort


def _train_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "model.name='stt'",
        f"model.width={args.width}",
        f"model.roi_size=[{args.patch},{args.patch},{args.patch}]",
        "data.max_studies=4",
        "data.lesion_fraction=0.7",
        "data.max_val_patients=3",
        "optim.lr=2e-3",
        "optim.warmup_steps=10",
        "optim.schedule='constant'",
        "validation.val_check_interval_steps=" + str(args.val_every),
        "validation.overlap=0.25",
        "trainer.max_epochs=-1",
        "trainer.max_steps=100000",
        "trainer.accelerator='cpu'",
        "trainer.threads=1",
        f"trainer.seed={args.seed}",
        "trainer.progress_bar=false",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/pretrain_benefit"))
    p.add_argument("--patients", type=int, default=12)
    p.add_argument("--shape", type=int, default=48)
    p.add_argument("--labelled", default="0.3", help="fraction of studies flagged labelled")
    p.add_argument("--budget-cpu-s", type=float, default=240.0, help="CPU seconds per arm")
    p.add_argument("--pretrain-share", type=float, default=0.5)
    p.add_argument("--objective", default="restore", choices=["restore", "restore+order"])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--val-every", type=int, default=40)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data = out / "cohort"
    if not (data / "tables").exists():
        generate_cohort(
            SynthConfig(
                n_patients=args.patients,
                shape=args.shape,
                seed=args.seed,
                max_studies=5,
                motion_max_deg=0,
                motion_max_mm=0,
                labelled=args.labelled,
                split_fractions=(0.6, 0.2, 0.2),
            ),
            data,
        )
    cohort = read_release(data)
    test = [pt for pt in cohort.patients if pt.split == "test"]
    n_studies = sum(len(pt.studies) for pt in cohort.patients)
    n_flagged = sum(s.labelled for pt in cohort.patients for s in pt.studies)
    print(
        f"cohort: {len(cohort.patients)} patients, {n_studies} studies, {n_flagged} flagged "
        f"labelled ({n_flagged / n_studies:.0%}); {len(test)} test patients "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    cfg = load_train_config(None, _train_overrides(args))
    budget = args.budget_cpu_s

    # arm 1: from scratch, the whole budget
    cb = CpuTimeBudget(budget)
    w0 = time.perf_counter()
    scratch = train(
        dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, cache_dir=str(out / "cache_s"))
        ),
        data,
        out / "scratch",
        cohort=cohort,
        callbacks=[cb],
    )
    scratch_cpu, scratch_wall = cb.used_cpu_s, time.perf_counter() - w0
    print(
        f"scratch: {scratch.global_step} steps, {scratch_cpu:.0f} CPU s ({scratch_wall:.0f} s "
        f"wall), best val {cfg.validation.score} {scratch.best_score:.3f}"
    )

    # arm 2: pretraining then fine-tuning, the same total budget
    start = time.process_time()
    w0 = time.perf_counter()
    pcfg = load_pretrain_config(
        None,
        [
            "model.name='stt'",
            f"model.width={args.width}",
            f"model.roi_size=[{args.patch},{args.patch},{args.patch}]",
            "data.max_studies=4",
            f"objective.name='{args.objective}'",
            "optim.lr=2e-3",
            "trainer.max_steps=100000",
            "trainer.accelerator='cpu'",
            "trainer.threads=1",
            f"trainer.seed={args.seed}",
            "trainer.progress_bar=false",
        ],
    )
    pcb = CpuTimeBudget(args.pretrain_share * budget, start_cpu_s=start)
    pre = pretrain(pcfg, data, out / "pretrain", cohort=cohort, callbacks=[pcb])
    pre_cpu = time.process_time() - start
    print(
        f"pretrain ({args.objective}): {pre.steps} steps on {pre.n_studies} studies, "
        f"{pre_cpu:.0f} CPU s; fixed-sample loss {pre.initial_loss:.3f} -> {pre.final_loss:.3f}"
    )
    fcb = CpuTimeBudget(budget, start_cpu_s=start)  # the same clock: pretraining counts
    ft_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, cache_dir=str(out / "cache_f")),
        trainer=dataclasses.replace(cfg.trainer, init_weights=str(pre.weights)),
    )
    ft = train(ft_cfg, data, out / "finetune", cohort=cohort, callbacks=[fcb])
    ft_cpu, ft_wall = fcb.used_cpu_s, time.perf_counter() - w0
    print(
        f"pretrain+finetune: {ft.global_step} fine-tuning steps, {ft_cpu:.0f} CPU s in total "
        f"({ft_wall:.0f} s wall), best val {cfg.validation.score} {ft.best_score:.3f}"
    )

    # evaluation on the test patients, every reference mask on disk
    evals = {
        "base": evaluate_run(scratch.best_ckpt, test, cfg, out / "cache_eval"),
        "pretrain": evaluate_run(ft.best_ckpt, test, cfg, out / "cache_eval"),
    }
    table = compare_variants(evals, n_bootstrap=args.bootstrap, seed=args.seed)
    md = (
        markdown_table(table)
        .replace("| base |", "| scratch |")
        .replace("vs base", "vs scratch")
        .replace("minus base", "minus scratch")
    )
    table["variant"] = table["variant"].replace({"base": "scratch"})
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(md)
    print()
    print(f"test: {len(test)} patients, {len(evals['base'])} labelled studies")
    print(f"{'metric':22s} {'scratch':>22s} {'pretrain':>22s} {'difference [95% CI]':>28s}")
    t = table.set_index(["variant", "metric"])
    for m in ("small_sensitivity", "fp_per_scan", "lesion_f1", "dice"):
        s, f = t.loc[("scratch", m)], t.loc[("pretrain", m)]
        print(
            f"{m:22s} {s['value']:8.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
            f" {f['value']:8.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]"
            f"   {f['diff']:+.3f} [{f['diff_ci_low']:+.3f}, {f['diff_ci_high']:+.3f}]"
        )
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "scratch": {"steps": scratch.global_step, "cpu_s": scratch_cpu, "wall_s": scratch_wall},
        "pretrain": {
            "pretrain_steps": pre.steps,
            "pretrain_cpu_s": pre_cpu,
            "finetune_steps": ft.global_step,
            "total_cpu_s": ft_cpu,
            "wall_s": ft_wall,
            "loss": [pre.initial_loss, pre.final_loss],
        },
        "table": table.to_dict(orient="records"),
        "total_wall_s": time.perf_counter() - t0,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten to {out} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
