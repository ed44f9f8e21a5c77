"""Speed and memory of the networks on CPU (figures printed side by side; never a test).

Measures, each in a fresh subprocess so the peak resident memory
(``resource.getrusage(...).ru_maxrss``) belongs to that measurement alone:

* parameters of STT and of the same backbone without memory (``unet``);
* one training step (forward + backward + AdamW step) on one patient sequence
  of 4 studies of 96^3 four-channel patches, STT vs ``unet``; the time ratio
  should stay under 1.10 since the ConvLSTM sits at 1/16 resolution;
* whole-study inference of a 192^3 four-channel study with
  :func:`metstrack.infer.sliding.predict_sequence` (96^3 windows, overlap 0.5,
  Gaussian blending); the peak must stay under 6 GiB.

Usage::

    PYTHONPATH=src python benchmarks/model_speed.py            # full sizes (minutes)
    PYTHONPATH=src python benchmarks/model_speed.py --quick    # 64^3 patches, 128^3 study

"Peak" is the process's maximum RSS; "above idle" subtracts the RSS measured
after importing torch and building the model and input, i.e. the memory the
step itself needs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GIB = 1024**3


def _rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _train_setup(name: str, size: int, studies: int):
    import torch

    from metstrack.models.config import ModelConfig
    from metstrack.models.registry import build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(name=name, roi_size=(96, 96, 96))).train()
    x = torch.randn(1, studies, 4, size, size, size)
    y = torch.randint(0, 2, (1, studies, size, size, size))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(0, 1))
        loss.backward()
        opt.step()
        return time.perf_counter() - w0, time.process_time() - c0

    return net, step


def measure(
    kind: str, name: str, size: int, studies: int, repeats: int, threads: int, warmup: int = 1
) -> dict:
    """Run one measurement in this process and return its figures.

    ``train``: peak memory and time of training steps of one network;
    ``train-time``: both networks' steps interleaved (``unet``, ``stt``, ``unet``...)
    so background load hits both alike, minimum wall and CPU time of each;
    ``infer``: whole-study sliding-window inference of STT.
    """
    import torch

    torch.set_num_threads(threads)
    if kind == "params":
        from metstrack.models.config import ModelConfig
        from metstrack.models.registry import build_model

        return {"params": sum(p.numel() for p in build_model(ModelConfig(name=name)).parameters())}
    if kind == "train-time":
        steps = {n: _train_setup(n, size, studies)[1] for n in ("unet", "stt")}
        for _ in range(warmup):
            for n in steps:
                steps[n]()
        got: dict[str, list[tuple[float, float]]] = {n: [] for n in steps}
        for _ in range(repeats):
            for n in steps:
                got[n].append(steps[n]())
        return {
            f"{n}_{k}": min(v[i] for v in got[n])
            for n in got
            for i, k in enumerate(("wall_s", "cpu_s"))
        }
    if kind == "train":
        _, step = _train_setup(name, size, studies)
        idle = _current_rss_bytes()
        times = [step() for _ in range(repeats + warmup)][warmup:]
        wall_s, cpu_s = min(t[0] for t in times), min(t[1] for t in times)
    elif kind == "infer":
        from metstrack.infer.sliding import predict_sequence
        from metstrack.models.config import ModelConfig
        from metstrack.models.registry import build_model

        torch.manual_seed(0)
        net = build_model(ModelConfig(name=name, roi_size=(96, 96, 96))).eval()
        x = torch.randn(1, 4, size, size, size)
        idle = _current_rss_bytes()
        times = []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            probs = predict_sequence(net, x, roi_size=(96, 96, 96), overlap=0.5)
            times.append((time.perf_counter() - w0, time.process_time() - c0))
            del probs
        wall_s, cpu_s = min(t[0] for t in times), min(t[1] for t in times)
    else:
        raise ValueError(kind)
    peak = _rss_bytes()
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_gib": peak / GIB,
        "above_idle_gib": (peak - idle) / GIB,
    }


def run_child(
    kind: str, name: str, size: int, studies: int, repeats: int, threads: int, warmup: int = 1
) -> dict:
    cmd = [
        sys.executable, __file__, "--child", kind, name, str(size), str(studies), str(repeats),
        str(threads), str(warmup),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="64^3 patches and a 128^3 study")
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions (minimum reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, name, size, studies, repeats, threads, warmup = args.child
        figures = measure(
            kind, name, int(size), int(studies), int(repeats), int(threads), int(warmup)
        )
        print(json.dumps(figures))
        return
    patch, study = (64, 128) if args.quick else (96, 192)
    import torch

    print(f"metstrack model speed (CPU, torch {torch.__version__}, {args.threads} threads)")
    rows = {}
    for name in ("stt", "unet"):
        rows[name] = run_child("params", name, 0, 0, 0, args.threads)
    print(
        f"\nparameters: stt {rows['stt']['params']:,}   unet (no memory) {rows['unet']['params']:,}"
    )
    train = {n: run_child("train", n, patch, 4, 1, args.threads, 0) for n in ("stt", "unet")}
    timing = run_child("train-time", "both", patch, 4, args.repeats, args.threads, args.warmup)
    print(f"\ntraining step, 1 patient x 4 studies x 4 x {patch}^3 (forward + backward + AdamW):")
    print(f"{'network':<8} {'wall s':>8} {'CPU s':>8} {'peak GiB':>9} {'above idle GiB':>15}")
    for name in ("stt", "unet"):
        m = train[name]
        print(
            f"{name:<8} {timing[name + '_wall_s']:>8.2f} {timing[name + '_cpu_s']:>8.2f} "
            f"{m['peak_gib']:>9.2f} {m['above_idle_gib']:>15.2f}"
        )
    ratio = timing["stt_cpu_s"] / timing["unet_cpu_s"]
    wall_ratio = timing["stt_wall_s"] / timing["unet_wall_s"]
    mem_ratio = train["stt"]["above_idle_gib"] / max(train["unet"]["above_idle_gib"], 1e-9)
    print(
        f"time ratio stt/unet: CPU {ratio:.3f}, wall {wall_ratio:.3f} "
        f"(target < 1.10: {'met' if ratio < 1.10 else 'NOT met'}); memory ratio {mem_ratio:.3f}"
    )
    print(
        f"(times: minimum of {args.repeats} interleaved steps after {args.warmup} warm-up; "
        "CPU time is robust to other processes sharing the cores, wall time is not)"
    )
    inf = run_child("infer", "stt", study, 1, 1, args.threads)
    print(f"\nwhole-study inference, STT, 4 x {study}^3, 96^3 windows, overlap 0.5, Gaussian:")
    ok = inf["peak_gib"] < 6.0
    print(
        f"wall {inf['wall_s']:.1f} s   CPU {inf['cpu_s']:.1f} s   peak {inf['peak_gib']:.2f} GiB   "
        f"above idle {inf['above_idle_gib']:.2f} GiB   (target peak < 6 GiB: {'met' if ok else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
