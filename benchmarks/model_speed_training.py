"""Training-step comparison of STT and its no-memory ablation (``model_speed.py --training``).

One training step (forward + backward + AdamW) on one patient sequence of 4
studies of 96^3 four-channel patches (64^3 with ``--quick``), STT vs ``unet``;
the CPU-time ratio should stay under 1.10 since the ConvLSTM sits at 1/16
resolution. Each measurement runs in a fresh subprocess (peak RSS its own).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

GIB = 1024**3


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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
    """``measure`` in a fresh subprocess (through ``model_speed.py --child``)."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_speed.py")
    args = ["training", kind, name, size, studies, repeats, threads, warmup]
    out = subprocess.run(
        [sys.executable, here, "--child", json.dumps(args)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def training_table(quick: bool, threads: int, repeats: int = 2, warmup: int = 1) -> None:
    """Print the training-step table of STT and ``unet``."""
    patch = 64 if quick else 96
    params = {n: run_child("params", n, 0, 0, 0, threads)["params"] for n in ("stt", "unet")}
    print(f"\nparameters: stt {params['stt']:,}   unet (no memory) {params['unet']:,}")
    train = {n: run_child("train", n, patch, 4, 1, threads, 0) for n in ("stt", "unet")}
    timing = run_child("train-time", "both", patch, 4, repeats, threads, warmup)
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
        f"(times: minimum of {repeats} interleaved steps after {warmup} warm-up; "
        "CPU time is robust to other processes sharing the cores, wall time is not)"
    )
