"""Time of ``validate_dataset`` (and the reader alone) on a synthetic release-layout cohort.

Generates a cohort with :mod:`metstrack.synth` (not timed), then prints the
median wall time over repeats of ``read_release`` and of ``validate_dataset``
for each number of worker threads, with studies and files per second.

Run: ``PYTHONPATH=src python benchmarks/validate_speed.py [--patients 6] [--shape 96]
[--workers 1 2 4] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from metstrack.io.release import read_release
from metstrack.io.validate import validate_dataset
from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--shape", type=int, default=96)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cohort"
        t0 = time.perf_counter()
        generate_cohort(SynthConfig(n_patients=args.patients, seed=0, shape=args.shape), root)
        print(
            f"generated {args.patients} patients at {args.shape}^3 in {time.perf_counter() - t0:.1f} s"
        )
        t_read, cohort = _median_time(lambda: read_release(root), args.repeats)
        n_studies = len(cohort.studies)
        n_files = sum(len(s.series) for s in cohort.studies)
        print(f"read_release: {t_read * 1e3:.1f} ms for {n_studies} studies ({n_files} files)")
        for w in args.workers:
            t, report = _median_time(lambda w=w: validate_dataset(root, workers=w), args.repeats)
            print(
                f"validate_dataset workers={w}: {t:.2f} s  "
                f"({n_studies / t:.1f} studies/s, {report.n_files / t:.1f} files/s, "
                f"{report.n_errors} errors, {report.n_warnings} warnings)"
            )


if __name__ == "__main__":
    main()
