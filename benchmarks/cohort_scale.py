"""Studies per minute on 1 and 2 workers, and the scheduler's overhead per task, side by side.

Usage::

    PYTHONPATH=src python benchmarks/cohort_scale.py [--patients 6] [--shape 48] [--noop 200]

One synthetic cohort is preprocessed (``preprocess_dataset``, heuristic brain
mask, default grid) five ways in one run, each into a fresh folder:

- ``local 1``: this process, one patient after another;
- ``local 2``: a process pool of 2 (``--workers 2``);
- ``dask 1`` and ``dask 2``: a Dask LocalCluster of 1 and 2 single-threaded
  worker processes (``--executor dask --workers N``); the cluster's start-up is
  timed apart, after one warm-up task, so the rate is the steady state.

Then ``--noop`` no-op tasks (``abs``) measure what one task costs the executor
beyond its work: per task in a batch (throughput), and the round trip of one
call of two tasks (submit to both results, median of 20; a local pool is
started per call, as the workflows do). The machine's load average is printed
with the figures: on a shared machine the rates move with the other jobs.
Nothing is asserted; the figures are for the closing note and docs/scale.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _rate(n_studies: int, seconds: float) -> float:
    return 60.0 * n_studies / seconds if seconds > 0 else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--shape", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noop", type=int, default=200, help="no-op tasks for the overhead")
    args = ap.parse_args(argv)

    from metstrack.execution.executor import DaskExecutor, LocalExecutor
    from metstrack.preprocess.config import PreprocessConfig
    from metstrack.preprocess.pipeline import preprocess_dataset
    from metstrack.synth.config import SynthConfig
    from metstrack.workflows.synth import generate_cohort

    tmp = Path(tempfile.mkdtemp(prefix="cohort_scale_"))
    try:
        cohort = generate_cohort(
            SynthConfig(
                n_patients=args.patients,
                seed=args.seed,
                shape=args.shape,
                min_studies=2,
                max_studies=3,
                vessel_bait=False,
                anatomy="phantom",
            ),
            tmp / "cohort",
        )
        cfg = PreprocessConfig(brain_method="heuristic")
        print(
            f"cohort: {args.patients} patients at {args.shape}^3; cpus {os.cpu_count()}; "
            f"load average before {os.getloadavg()[0]:.2f}"
        )
        rows: list[tuple[str, float, float, float]] = []  # name, start s, run s, studies/min
        overhead: list[tuple[str, float, float]] = []  # name, per task ms (batch), round trip ms

        def timed(name: str, executor, start_s: float) -> None:
            t0 = time.perf_counter()
            report = preprocess_dataset(
                cohort, tmp / name.replace(" ", "_"), cfg, executor=executor
            )
            wall = time.perf_counter() - t0
            assert not report.failed, report.failed[0].message
            rows.append((name, start_s, wall, _rate(len(report.outcomes), wall)))

        def noop(name: str, executor) -> None:
            items = list(range(-args.noop, 0))
            t0 = time.perf_counter()
            n = sum(1 for _ in executor.map_unordered(abs, items))
            batch = (time.perf_counter() - t0) / n
            trips = []
            for _ in range(20):
                t1 = time.perf_counter()
                list(executor.map_unordered(abs, [-1, -2]))
                trips.append(time.perf_counter() - t1)
            overhead.append((name, 1e3 * batch, 1e3 * statistics.median(trips)))

        timed("local 1", LocalExecutor(1), 0.0)
        timed("local 2", LocalExecutor(2), 0.0)
        noop("local pool 2", LocalExecutor(2))
        for n in (1, 2):
            t0 = time.perf_counter()
            with DaskExecutor(workers=n) as dask:
                list(dask.map_unordered(abs, [-1] * n))  # every worker up
                start = time.perf_counter() - t0
                timed(f"dask {n}", dask, start)
                if n == 2:
                    noop("dask 2", dask)
        n_studies = sum(1 for _ in (tmp / "local_1" / "transforms").rglob("*.json"))
        print(f"\npreprocess, {n_studies} studies ({args.patients} patients)")
        print(f"{'executor':<10} {'start s':>8} {'run s':>8} {'studies/min':>12}")
        for name, start, wall, rate in rows:
            print(f"{name:<10} {start:>8.1f} {wall:>8.1f} {rate:>12.1f}")
        print(f"\nno-op tasks ({args.noop} in a batch; round trip: median of 20 calls of 2 tasks)")
        print(f"{'executor':<13} {'ms per task':>12} {'round trip ms':>14}")
        for name, per_task, trip in overhead:
            print(f"{name:<13} {per_task:>12.2f} {trip:>14.1f}")
        print(f"\nload average after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
