"""Time and peak memory of metstrack's evaluation on 192^3 volumes, side by side.

For 5, 20, 50 and 200 lesions per side (reference and prediction), prints the
median wall and CPU time over repeats and the peak traced memory of:

- ``previous``: the lesion-wise evaluation as it was before issue 18, rebuilt
  here from the same library pieces (``label_map`` with ``cc3d.statistics``, an
  erosion per lesion for its surface, the joint histogram over the volume, one
  KD-tree pair per matched lesion); its lesion HD95s are checked equal to the
  fast path's (column ``same``);
- the full lesion-wise study evaluation (``evaluate_study``) in both matching
  modes (one labelled pass over the foreground, matching, per-lesion Dice/HD95
  in one batched exact query, strata, voxel metrics);
- the voxel metrics alone (``compute_voxel_metrics``: Dice, HD95, ASD, surface Dice);
- panoptica's lesion-wise evaluation (connected components, one-to-one matching,
  Dice and HD95) when panoptica is installed (optional; never a dependency).

Target (issue 18): <= 0.1 s of CPU at 50 lesions, flat in the number of lesions.
CPU time (this process only) is the figure to trust on a shared, loaded machine.
Single core: thread pools are pinned to one thread before NumPy is imported.
Run: ``PYTHONPATH=src python benchmarks/metrics_speed.py [--size 192] [--repeats 5]``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from metstrack.core.lesions import label_map  # noqa: E402
from metstrack.metrics.detection import _stack, component_surfaces  # noqa: E402
from metstrack.metrics.matching import match_lesions, pair_overlaps  # noqa: E402
from metstrack.metrics.study import StudyOptions, evaluate_study  # noqa: E402
from metstrack.metrics.voxel import (  # noqa: E402
    compute_voxel_metrics,
    hd95_from_distances,
    surface_distances_from_points,
    voxel_metrics_from_parts,
)


def previous_path(pred: np.ndarray, ref: np.ndarray, spacing: tuple) -> list[float]:
    """The lesion-wise evaluation before issue 18 (overlap mode); returns the TP lesion HD95s."""
    pm, rm = label_map(pred), label_map(ref)
    psurf, rsurf = component_surfaces(pm), component_surfaces(rm)
    overlaps = pair_overlaps(pm, rm)
    matching = match_lesions(pm, rm, voxel_volume_mm3=1.0, overlaps=overlaps)
    hds = []
    for comps, ps in zip(matching.ref_units, matching.unit_pred, strict=True):
        if ps:
            d = surface_distances_from_points(
                _stack([psurf[p] for p in ps]),
                _stack([rsurf[r] for r in comps]),
                spacing_mm=spacing,
            )
            hds.append(hd95_from_distances(d))
    voxel_metrics_from_parts(
        n_pred=int(pm.voxel_counts[1:].sum()),
        n_ref=int(rm.voxel_counts[1:].sum()),
        n_inter=sum(overlaps.values()),
        pred_surface=_stack(psurf[1:]),
        ref_surface=_stack(rsurf[1:]),
        spacing_mm=spacing,
        voxel_volume_mm3=1.0,
        tolerance_mm=1.0,
    )
    return hds


def panoptica_evaluator():
    """panoptica's semantic-input evaluator (CC + one-to-one matching), or None."""
    try:
        from panoptica import (  # noqa: PLC0415
            ConnectedComponentsInstanceApproximator,
            InputType,
            NaiveThresholdMatching,
            Panoptica_Evaluator,
        )
    except ImportError:
        return None
    ev = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(),
    )
    return lambda p, r: ev.evaluate(p.astype(np.uint8), r.astype(np.uint8), verbose=False)


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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lesions", type=int, nargs="+", default=[5, 20, 50, 200])
    args = ap.parse_args()
    sp = (1.0, 1.0, 1.0)
    pano = panoptica_evaluator()
    print(
        f"volume {args.size}^3 ({args.size**3 / 1e6:.1f} M voxels), 1 thread, median of "
        f"{args.repeats}; wall / CPU seconds; memory = peak traced by tracemalloc; load "
        f"average {os.getloadavg()[0]:.1f} (other jobs share the 2 cores)"
    )
    print(
        f"{'lesions':>7} {'matched':>7} | {'previous wall/cpu s':>19} {'same':>4} | "
        f"{'overlap wall/cpu s':>18} {'MiB':>4} | {'brats wall/cpu s':>16} {'MiB':>4} | "
        f"{'voxel wall/cpu s':>16} | {'panoptica wall/cpu s':>20}"
    )
    for n in args.lesions:
        pred, ref = phantom(n, args.size, seed=n)
        old = measure(lambda p=pred, r=ref: previous_path(p, r, sp), args.repeats)
        o = measure(lambda p=pred, r=ref: evaluate_study(p, r, spacing_mm=sp), args.repeats)
        b = measure(
            lambda p=pred, r=ref: evaluate_study(
                p, r, spacing_mm=sp, options=StudyOptions(mode="brats")
            ),
            args.repeats,
        )
        v = measure(lambda p=pred, r=ref: compute_voxel_metrics(p, r, spacing_mm=sp), args.repeats)
        ev = evaluate_study(pred, ref, spacing_mm=sp)
        fast_hd = [r.hd95_mm for r in ev.lesions if r.kind == "tp"]
        same = np.allclose(fast_hd, previous_path(pred, ref, sp), rtol=0, atol=1e-9)
        pa = "not installed"
        if pano is not None:
            t = measure(lambda p=pred, r=ref: pano(p, r), max(1, args.repeats // 2))
            pa = f"{t[0]:.3f} / {t[1]:.3f}"
        print(
            f"{n:>7} {ev.detection.tp:>7} | {old[0]:>9.3f} / {old[1]:>7.3f} {'yes' if same else 'NO':>4} | "
            f"{o[0]:>8.3f} / {o[1]:>7.3f} {o[2]:>4.0f} | {b[0]:>6.3f} / {b[1]:>7.3f} {b[2]:>4.0f} | "
            f"{v[0]:>6.3f} / {v[1]:>7.3f} | {pa:>20}"
        )


if __name__ == "__main__":
    main()
