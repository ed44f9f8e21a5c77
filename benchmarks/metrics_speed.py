"""Time and peak memory of metstrack's evaluation on 192^3 volumes.

For 5, 20, 50 and 200 lesions per side (reference and prediction), prints the
median wall time over repeats and the peak traced memory of:

- the full lesion-wise study evaluation (``evaluate_study``) in both matching
  modes (labelling, joint histogram, matching, per-lesion Dice/HD95, strata,
  voxel metrics), and
- the voxel metrics alone (``compute_voxel_metrics``: Dice, HD95, ASD, surface Dice).

Single core: thread pools are pinned to one thread before NumPy is imported.
Run: ``PYTHONPATH=src python benchmarks/metrics_speed.py [--size 192] [--repeats 3]``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from metstrack.metrics.study import StudyOptions, evaluate_study  # noqa: E402
from metstrack.metrics.voxel import compute_voxel_metrics  # noqa: E402


def phantom(n_lesions: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference with ``n_lesions`` balls (radius 1-8 voxels, many small) and a
    prediction with as many lesions: most references shifted by a voxel and
    resized, some missed, replaced by false positives."""
    rng = np.random.default_rng(seed)
    shape = (size, size, size)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    rmax = 8
    g = np.indices((2 * rmax + 1,) * 3) - rmax
    d2 = (g**2).sum(0)

    def put(mask: np.ndarray, c: np.ndarray, r: float) -> None:
        sl = tuple(slice(int(ci) - rmax, int(ci) + rmax + 1) for ci in c)
        mask[sl] |= d2 <= r * r

    n_missed = max(1, n_lesions // 10)
    for i in range(n_lesions):
        c = rng.integers(rmax + 2, size - rmax - 2, 3)
        r = float(np.clip(rng.lognormal(np.log(2.5), 0.6), 0.8, rmax - 1))
        put(ref, c, r)
        if i >= n_missed:
            put(
                pred,
                c + rng.integers(-1, 2, 3),
                float(np.clip(r * rng.uniform(0.8, 1.2), 0.8, rmax)),
            )
        else:
            put(pred, rng.integers(rmax + 2, size - rmax - 2, 3), float(rng.uniform(0.8, 2.0)))
    return pred, ref


def measure(fn, repeats: int) -> tuple[float, float, float]:
    """Median wall and CPU seconds over ``repeats`` and peak traced MiB of one call.

    CPU time (this process only) is the figure to trust on a shared, loaded machine.
    """
    fn()  # warm-up (imports, caches)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return float(np.median(wall)), float(np.median(cpu)), peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lesions", type=int, nargs="+", default=[5, 20, 50, 200])
    args = ap.parse_args()
    sp = (1.0, 1.0, 1.0)
    print(
        f"volume {args.size}^3 ({args.size**3 / 1e6:.1f} M voxels), 1 thread, median of "
        f"{args.repeats}; wall / CPU seconds; memory = peak traced by tracemalloc"
    )
    print(
        f"{'lesions':>7} {'matched':>7} | {'overlap wall/cpu s':>18} {'MiB':>4} | "
        f"{'brats wall/cpu s':>16} {'MiB':>4} | {'voxel wall/cpu s':>16} {'MiB':>4}"
    )
    for n in args.lesions:
        pred, ref = phantom(n, args.size, seed=n)
        o = measure(lambda p=pred, r=ref: evaluate_study(p, r, spacing_mm=sp), args.repeats)
        b = measure(
            lambda p=pred, r=ref: evaluate_study(
                p, r, spacing_mm=sp, options=StudyOptions(mode="brats")
            ),
            args.repeats,
        )
        v = measure(lambda p=pred, r=ref: compute_voxel_metrics(p, r, spacing_mm=sp), args.repeats)
        tp = evaluate_study(pred, ref, spacing_mm=sp).detection.tp
        print(
            f"{n:>7} {tp:>7} | {o[0]:>8.3f} / {o[1]:>7.3f} {o[2]:>4.0f} | "
            f"{b[0]:>6.3f} / {b[1]:>7.3f} {b[2]:>4.0f} | {v[0]:>6.3f} / {v[1]:>7.3f} {v[2]:>4.0f}"
        )


if __name__ == "__main__":
    main()
