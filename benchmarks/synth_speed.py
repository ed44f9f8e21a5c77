"""Time and peak memory to generate a synthetic imaging cohort (default: 20 patients at 128^3).

Usage::

    PYTHONPATH=src python benchmarks/synth_speed.py [--patients 20] [--shape 128] [--workers 1]

Prints wall and CPU time, time per patient and per study, the peak Python-heap memory
of the main process (tracemalloc, which counts NumPy buffers) and the peak
resident set size of the main process and of worker processes (getrusage).
The cohort is written to a temporary folder that is removed afterwards unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--shape", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="keep the cohort here")
    args = ap.parse_args(argv)

    import pandas as pd

    from metstrack.synth.config import SynthConfig
    from metstrack.workflows.synth import generate_cohort

    cfg = SynthConfig(
        n_patients=args.patients, seed=args.seed, shape=args.shape, workers=args.workers
    )
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="synth_bench_")
        out = Path(tmp) / "cohort"
    try:
        tracemalloc.start()
        t0 = time.perf_counter()
        c0 = time.process_time()
        generate_cohort(cfg, out)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += child.ru_utime + child.ru_stime
        _, peak_heap = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        n_studies = len(pd.read_csv(out / "tables" / "imaging.csv"))
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"synthetic cohort: {args.patients} patients, {n_studies} studies, "
        f"{args.shape}^3 voxels, workers={args.workers}"
    )
    print(f"wall time        {wall:8.1f} s")
    print(f"cpu time         {cpu:8.1f} s (all processes; wall/cpu shows contention)")
    print(f"per patient      {wall / args.patients:8.2f} s wall, {cpu / args.patients:6.2f} s cpu")
    print(f"per study        {wall / n_studies:8.2f} s wall, {cpu / n_studies:6.2f} s cpu")
    print(f"peak heap        {peak_heap / 2**20:8.0f} MiB (tracemalloc, main process)")
    print(f"peak RSS         {self_rss:8.0f} MiB (main process)")
    if args.workers > 1:
        print(f"peak RSS workers {child_rss:8.0f} MiB (largest worker)")
    print(f"disk             {size / 2**20:8.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
