"""Inference speed and memory of metstrack on CPU, side by side in one run (never a test).

Every figure comes from a fresh subprocess, so its peak resident memory
(``ru_maxrss``) belongs to that measurement alone. Torch runs ``--threads``
threads (default 1: the benchmark machine's 2 cores are shared; say so when
quoting numbers). Compare rows of one run only: they ran under the same load.

1. **Sequence inference of the published full-size STT** (random weights, seed 0)
   on one patient of ``--studies`` studies (default 3) of 4 x ``--size``^3
   (default 192^3), through :func:`metstrack.infer.sliding.predict_sequence`:

   * ``reference``: the settings before issue 18 (fp32, the network as trained
     in the ``ncdhw`` memory format, one window per call);
   * ``default``: ``metstrack predict``'s defaults (two windows per call,
     ``precision="auto"`` and ``memory_format="auto"``: on a CPU with native bf16,
     bf16 in the channels-last format; the row names what it resolved to);
   * ``fp32 channels-last``: what the defaults give on a CPU without native bf16;
   * ``bf16 ncdhw``: bf16 in the usual memory format (the bf16 path before the
     channels-last format);
   * ``whole-volume``: the whole (padded) volume in one window, fp32, study by
     study: what the published code's whole-volume forward does.

   Targets (issue 18): the default sliding window per study takes no longer than
   the whole-volume forward per study (ratio <= 1), with peak memory <= 4 GiB.
   Each fast row also reports its largest probability difference from
   ``reference`` and the Dice of their ``p >= 0.5`` masks (random weights: a
   numerical check, not a quality figure; see ``--demo`` for that).

2. **The real case** (``--real``, default ``/work/shared/realdata/brats-met-00110``
   when present): the default ``metstrack predict`` with the shipped model on
   one 240x240x155 BraTS study, input preprocessed on the way in; wall time of
   the whole command. Target <= 60 s on 2 cores. Threads: torch's default (the
   command as a user runs it).

3. **Fast vs reference on the demo cohort** (``--demo PREP``, a ``metstrack
   preprocess`` output of ``metstrack synth``; ``--demo synth`` makes the demo's
   cohort first): ``metstrack predict`` with the reference settings
   (``--sw-batch-size 1``) and with each fast setting; per-study Dice of the masks
   and the largest probability difference.

4. **GPU** (``--gpu``): where PyTorch sees a CUDA device, studies per second
   and peak GPU memory (``torch.cuda.max_memory_allocated``) of the published
   full-size STT's sequence inference in fp32, bf16 and fp16 (96^3 windows,
   overlap 0.5), and of the whole-volume forward in fp32. Without a GPU it says
   so and prints no figure.

``--profile`` prints torch.profiler's operator table for one 96^3 window in fp32
and bf16; ``--training`` adds the training-step comparison of STT and its
no-memory ablation.

Usage::

    PYTHONPATH=src python benchmarks/model_speed.py                  # 1 + 2 (about 20 min)
    PYTHONPATH=src python benchmarks/model_speed.py --quick          # 128^3, 2 studies
    PYTHONPATH=src python benchmarks/model_speed.py --skip-volume --demo synth
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1024**3
REAL_CASE = Path("/work/shared/realdata/brats-met-00110")
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "metstrack" / "data" / "stt_demo.pt"

#: name -> predict_sequence settings; roi None: the whole volume in one window.
VOLUME_RUNS: dict[str, dict] = {
    "reference": {"roi": 96, "sw_batch_size": 1, "precision": "fp32", "format": "ncdhw"},
    "default": {"roi": 96, "sw_batch_size": 2, "precision": "auto", "format": "auto"},
    "fp32 channels-last": {
        "roi": 96, "sw_batch_size": 2, "precision": "fp32", "format": "channels-last",
    },
    "bf16 ncdhw": {"roi": 96, "sw_batch_size": 2, "precision": "bf16", "format": "ncdhw"},
    "whole-volume": {"roi": None, "sw_batch_size": 1, "precision": "fp32", "format": "ncdhw"},
}  # fmt: skip
#: name -> extra ``metstrack predict`` arguments for the demo-cohort comparison.
DEMO_RUNS: dict[str, list[str]] = {
    "reference": ["--sw-batch-size", "1", "--precision", "fp32", "--memory-format", "ncdhw"],
    "default": [],
    "fp32": ["--precision", "fp32"],
    "bf16 ncdhw": ["--precision", "bf16", "--memory-format", "ncdhw"],
    "bf16 ch-last": ["--precision", "bf16", "--memory-format", "channels-last"],
}


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_volume(spec: dict, size: int, studies: int, threads: int, out: str) -> dict:
    """One sequence inference of the full-size STT in this process; saves p(lesion)."""
    import numpy as np
    import torch

    from metstrack.infer.predict import PredictOptions
    from metstrack.infer.sliding import (
        predict_sequence,
        resolve_memory_format,
        resolve_precision,
    )
    from metstrack.models.config import ModelConfig
    from metstrack.models.registry import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="stt", roi_size=(96, 96, 96))).eval()
    x = torch.randn(studies, 4, size, size, size, generator=torch.Generator().manual_seed(0))
    idle = _rss_bytes()
    roi = None if spec["roi"] is None else (spec["roi"],) * 3
    precision = resolve_precision(spec["precision"])
    fmt = resolve_memory_format(spec["format"], net, precision)
    w0, c0 = time.perf_counter(), time.process_time()
    probs = predict_sequence(
        net,
        x,
        roi_size=roi,
        overlap=PredictOptions().overlap,
        sw_batch_size=spec["sw_batch_size"],
        precision=precision,
        memory_format=fmt,
    )
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    np.save(out, probs[:, 1].numpy())
    peak = _peak_rss_bytes()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_gib": peak / GIB,
        "above_idle_gib": (peak - idle) / GIB,
        "resolved": f"{precision} {fmt}",
    }


def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dice(a, b) -> float:
    import numpy as np

    n = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / n if n else float("nan")


def volume_table(size: int, studies: int, threads: int, runs: list[str]) -> None:
    import numpy as np

    print(
        f"\n1. sequence inference, full-size STT (random weights), {studies} studies x 4 x "
        f"{size}^3, {threads} torch thread(s):"
    )
    print(
        f"{'run':<20} {'wall s':>8} {'CPU s':>8} {'CPU s/study':>11} {'peak GiB':>9} "
        f"{'max|dp|':>8} {'Dice':>7}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="model_speed_"))
    got: dict[str, dict] = {}
    try:
        for name in runs:
            path = str(tmp / f"{len(got)}.npy")
            got[name] = _run_child(["volume", VOLUME_RUNS[name], size, studies, threads, path])
            got[name]["path"] = path
            m = got[name]
            diff = dice = float("nan")
            if name != "reference" and "reference" in got:
                ref = np.load(got["reference"]["path"])
                cur = np.load(path)
                diff = float(np.abs(ref - cur).max())
                dice = _dice(ref >= 0.5, cur >= 0.5)
            print(
                f"{name:<20} {m['wall_s']:>8.1f} {m['cpu_s']:>8.1f} {m['cpu_s'] / studies:>11.1f} "
                f"{m['peak_gib']:>9.2f} {diff:>8.2g} {dice:>7.4f}   ({m['resolved']})",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "whole-volume" in got:
        whole = got["whole-volume"]["cpu_s"]
        print("ratios to the whole-volume forward (CPU time; target <= 1 with peak <= 4 GiB):")
        for name, m in got.items():
            if name == "whole-volume":
                continue
            r = m["cpu_s"] / whole
            ok = r <= 1.0 and m["peak_gib"] <= 4.0
            print(
                f"  {name:<20} {r:5.2f}   peak {m['peak_gib']:.2f} GiB   {'met' if ok else 'NOT met'}"
            )


def real_case(case: Path) -> None:
    print(
        f"\n2. default `metstrack predict` on {case.name} (shipped model, preprocessed on the way in):"
    )
    with tempfile.TemporaryDirectory(prefix="model_speed_real_") as tmp:
        cmd = [
            sys.executable, "-m", "metstrack.cli.main", "predict", "--checkpoint", str(SHIPPED),
            "--data", str(case), "--out", tmp,
        ]  # fmt: skip
        w0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - w0
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(
        f"wall {wall:.1f} s   CPU {cpu:.1f} s   (target wall <= 60 s on 2 cores: "
        f"{'met' if wall <= 60 else 'NOT met'})"
    )


def _synth_demo(work: Path) -> Path:
    """The demo's cohort (``metstrack demo`` defaults), preprocessed; returns its folder."""
    cli = [sys.executable, "-m", "metstrack.cli.main"]
    subprocess.run(
        [*cli, "synth", "--patients", "4", "--seed", "0", "--shape", "128", "--spacing", "1.5",
         "--studies-max", "4", "--workers", "2", "--out", str(work / "data")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*cli, "preprocess", "--data", str(work / "data"), "--out", str(work / "prep"),
         "--workers", "2", "--set", "spacing_mm=1.5"],
        check=True, capture_output=True,
    )  # fmt: skip
    return work / "prep"


def _rows(csv: Path) -> int:
    return len(csv.read_text().splitlines()) - 1


def demo_dice(prep: str, threads: int) -> None:
    import nibabel as nib
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="model_speed_demo_"))
    try:
        root = _synth_demo(work) if prep == "synth" else Path(prep)
        print(f"\n3. fast vs reference `metstrack predict` on the demo cohort {root}:")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        wall: dict[str, float] = {}
        for name, extra in DEMO_RUNS.items():
            cmd = [
                sys.executable, "-m", "metstrack.cli.main", "predict", "--checkpoint",
                str(SHIPPED), "--data", str(root), "--out", str(work / name), *extra,
            ]  # fmt: skip
            w0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            wall[name] = time.perf_counter() - w0
        masks = sorted((work / "reference").glob("predictions/**/mask.nii.gz"))
        print(f"{'run':<14} {'wall s':>7} {'studies':>7} {'Dice min':>9} {'Dice mean':>9} "
              f"{'lesions ref/run':>15} {'max|dp|':>8}")  # fmt: skip
        for name in DEMO_RUNS:
            dices, n_ref, n_run, dp = [], 0, 0, 0.0
            for m in masks:
                other = work / name / m.relative_to(work / "reference")
                a = np.asarray(nib.load(m).dataobj) > 0
                b = np.asarray(nib.load(other).dataobj) > 0
                d = _dice(a, b)
                dices.append(1.0 if d != d else d)  # both empty: identical
                pa, pb = (
                    np.asarray(nib.load(p.parent / "prob.nii.gz").dataobj) for p in (m, other)
                )
                dp = max(dp, float(np.abs(pa - pb).max()))
                n_ref += _rows(m.parent / "lesions.csv")
                n_run += _rows(other.parent / "lesions.csv")
            print(
                f"{name:<14} {wall[name]:>7.1f} {len(masks):>7} {min(dices):>9.4f} "
                f"{float(np.mean(dices)):>9.4f} {f'{n_ref}/{n_run}':>15} {dp:>8.2g}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gpu_table(size: int, studies: int) -> None:
    """Studies per second and peak GPU memory of the full-size STT (only where CUDA is)."""
    import torch

    from metstrack.infer.sliding import predict_sequence

    print(f"\n4. GPU: full-size STT (random weights), {studies} studies x 4 x {size}^3:")
    if not torch.cuda.is_available():
        print("no CUDA device on this machine: no GPU figure (none measured, none estimated)")
        return
    from metstrack.models.config import ModelConfig
    from metstrack.models.registry import build_model

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}")
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="stt", roi_size=(96, 96, 96))).eval().to(dev)
    x = torch.randn(studies, 4, size, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{'run':<22} {'wall s':>8} {'studies/s':>10} {'peak GPU GiB':>13}")
    for name, roi, precision in (
        ("sliding fp32", (96,) * 3, "fp32"),
        ("sliding bf16", (96,) * 3, "bf16"),
        ("sliding fp16", (96,) * 3, "fp16"),
        ("whole-volume fp32", None, "fp32"),
    ):
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            print(f"{name:<22} (this GPU has no bf16)")
            continue
        predict_sequence(net, x[:1, :, :96, :96, :96], roi_size=None, precision=precision)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        w0 = time.perf_counter()
        predict_sequence(net, x, roi_size=roi, precision=precision, sw_batch_size=2)
        torch.cuda.synchronize()
        wall = time.perf_counter() - w0
        peak = torch.cuda.max_memory_allocated(dev) / GIB
        print(f"{name:<22} {wall:>8.2f} {studies / wall:>10.2f} {peak:>13.2f}", flush=True)


def profile_window(threads: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from metstrack.infer.sliding import predict_sequence
    from metstrack.models.config import ModelConfig
    from metstrack.models.registry import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="stt", roi_size=(96, 96, 96))).eval()
    x = torch.randn(1, 4, 96, 96, 96)
    for precision, fmt in (("fp32", "ncdhw"), ("bf16", "ncdhw"), ("bf16", "channels-last")):
        kw = {"roi_size": None, "precision": precision, "memory_format": fmt}
        predict_sequence(net, x, **kw)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            predict_sequence(net, x, **kw)
        print(
            f"\nprofile: one 96^3 window of the full-size STT, {precision} {fmt}, {threads} thread(s)"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="128^3 and 2 studies")
    ap.add_argument("--size", type=int, default=192, help="volume edge (voxels)")
    ap.add_argument("--studies", type=int, default=3, help="studies of the patient")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--runs", nargs="+", choices=list(VOLUME_RUNS), default=list(VOLUME_RUNS),
        help="rows of table 1 (reference first for the agreement columns)",
    )  # fmt: skip
    ap.add_argument("--skip-volume", action="store_true", help="skip table 1")
    ap.add_argument("--real", default=str(REAL_CASE) if REAL_CASE.is_dir() else "")
    ap.add_argument("--demo", default="", help="preprocessed demo cohort, or 'synth'")
    ap.add_argument("--profile", action="store_true", help="torch.profiler of one window")
    ap.add_argument("--gpu", action="store_true", help="GPU figures (where CUDA is)")
    ap.add_argument("--training", action="store_true", help="training-step comparison")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        if kind == "volume":
            print(json.dumps(child_volume(*rest)))
        else:
            from model_speed_training import measure  # noqa: PLC0415

            print(json.dumps(measure(*rest)))
        return
    import torch

    size, studies = (128, 2) if args.quick else (args.size, args.studies)
    load = os.getloadavg()
    print(
        f"metstrack model speed: CPU, torch {torch.__version__}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} at start (other jobs share the cores)"
    )
    if args.profile:
        profile_window(args.threads)
    if not args.skip_volume:
        volume_table(size, studies, args.threads, args.runs)
    if args.real:
        real_case(Path(args.real))
    if args.demo:
        demo_dice(args.demo, args.threads)
    if args.gpu:
        gpu_table(size, studies)
    if args.training:
        from model_speed_training import training_table  # noqa: PLC0415

        training_table(args.quick, args.threads)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
