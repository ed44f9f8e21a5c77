"""Run the metstrack benchmark and copy its leaderboard into ``benchmarks/results/``.

A thin wrapper around :func:`metstrack.benchmark.runner.run_benchmark` (the
library behind ``metstrack benchmark``): it runs the config, then copies
``leaderboard.{md,csv,json}`` and the resolved ``config.json`` from the output
folder into ``--results`` (default ``benchmarks/results``), where the committed
leaderboard lives. Prints the leaderboard; never run as a test.

    PYTHONPATH=src python benchmarks/run_benchmark.py --config configs/benchmark.toml --out runs/benchmark
    PYTHONPATH=src python benchmarks/run_benchmark.py --config configs/benchmark_tiny.toml \
        --out runs/tiny --results runs/tiny-results
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/benchmark.toml"))
    ap.add_argument("--out", type=Path, required=True, help="benchmark output folder")
    ap.add_argument("--models", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--set", action="append", default=[], help="override section.key=value")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to copy the leaderboard")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from metstrack.benchmark.config import load_benchmark_config
    from metstrack.benchmark.runner import run_benchmark

    cfg = load_benchmark_config(args.config, args.set)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    result = run_benchmark(
        cfg,
        args.out,
        models=names,
        config_path=args.config,
        on_event=lambda m: print(m, flush=True),
    )
    args.results.mkdir(parents=True, exist_ok=True)
    for path in (*result.paths.values(), result.out_dir / "config.json"):
        shutil.copyfile(path, args.results / path.name)
    print(result.paths["md"].read_text(encoding="utf-8"))
    print(f"copied to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
