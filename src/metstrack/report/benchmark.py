"""The benchmark's FROC comparison as a report section (``metstrack report --benchmark``).

Reads what ``metstrack benchmark`` wrote: ``froc.csv`` (one row per label regime
and arm at the common FP/scan operating point, with the paired bootstrap
differences to the reference arm), ``froc_<regime>.png`` (the pooled test FROC
curves), ``froc_targets.csv`` (the comparison at other FP/scan targets, when
configured) and ``config.json`` (the resolved config, the commit and the machine).
The pictures are copied into the report's ``img/`` folder, so the report stays
self-contained.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

from metstrack.benchmark.froc_report import format_cell, format_diff
from metstrack.core.atomic import write_json_atomic, write_text_atomic
from metstrack.errors import DatasetError
from metstrack.report.html import esc, figure, page

#: Files of a benchmark folder this section reads.
FROC_CSV = "froc.csv"
TARGETS_CSV = "froc_targets.csv"
CONFIG_JSON = "config.json"

_REGIME_TITLES = {
    "all": "every study labelled",
    "radiosurgery": "label-scarce: only radiosurgery studies labelled",
}


def read_froc(bench_dir: Path) -> pd.DataFrame:
    """``froc.csv`` of a benchmark folder.

    Raises:
        DatasetError: The file is missing or lacks the FROC columns (names the file).
    """
    path = Path(bench_dir) / FROC_CSV
    if not path.is_file():
        raise DatasetError(
            f"{path}: not found; --benchmark takes the --out folder of `metstrack benchmark` "
            "run with its [froc] comparison"
        )
    frame = pd.read_csv(path)
    need = {"regime", "arm", "fp_per_scan", "sensitivity_all", "sensitivity_lt10_mm3"}
    missing = sorted(need - set(frame.columns))
    if missing:
        raise DatasetError(f"{path}: not a FROC table of metstrack benchmark (no {missing})")
    return frame


def _html_table(rows: pd.DataFrame) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in rows.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in rec) + "</tr>"
        for rec in rows.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _comparison_columns(part: pd.DataFrame) -> dict[str, list[str]]:
    """The arm, test FP/scan and sensitivity-with-difference columns of a FROC table part."""
    return {
        "arm": part["arm"].astype(str).tolist(),
        "test FP/scan": [format_cell(v) for v in part["fp_per_scan"]],
        "sens. all": [format_cell(v) for v in part["sensitivity_all"]],
        "diff all": [format_diff(r, "all") for _, r in part.iterrows()],
        "sens. < 10 mm3": [format_cell(v) for v in part["sensitivity_lt10_mm3"]],
        "diff < 10 mm3": [format_diff(r, "lt10_mm3") for _, r in part.iterrows()],
    }


def _other_targets(bench: Path, regime: str) -> str:
    """HTML of the comparison at the other FP/scan targets of one regime ('' without them)."""
    path = bench / TARGETS_CSV
    if not path.is_file():
        return ""
    frame = pd.read_csv(path)
    part = frame[frame["regime"].astype(str) == regime]
    if part.empty:
        return ""
    rows = pd.DataFrame(
        {
            "target FP/scan": [f"{v:g}" for v in part["fp_per_scan_target"]],
            **_comparison_columns(part),
        }
    )
    return "<p>The same comparison at other FP/scan targets:</p>" + _html_table(rows)


def benchmark_section(bench_dir: str | Path, out: Path, facts: dict) -> str:
    """HTML of the benchmark section: per regime, the arms at the common operating point.

    Args:
        bench_dir: Output folder of ``metstrack benchmark``.
        out: Report folder (the FROC pictures are copied to ``out/img``).
        facts: The report's numbers (``facts["benchmark"]`` is filled).

    Raises:
        DatasetError: No readable ``froc.csv`` in ``bench_dir``.
    """
    bench = Path(bench_dir)
    frame = read_froc(bench)
    parts = ["<h2>Benchmark: lesion detection at a common false-positive rate</h2>"]
    cfg_path = bench / CONFIG_JSON
    if cfg_path.is_file():
        saved = json.loads(cfg_path.read_text(encoding="utf-8"))
        machine = saved.get("machine") or {}
        froc = (saved.get("config") or {}).get("froc") or {}
        parts.append(
            "<p class='note'>"
            f"Operating point of every run: the lowest threshold whose FP/scan on its validation "
            f"patients is at most {esc(froc.get('fp_per_scan_target', '?'))}; sensitivities and "
            "FP/scan on the test patients, pooled over seeds; differences to the reference arm "
            f"<code>{esc(froc.get('reference', '?'))}</code> with paired patient-level bootstrap "
            f"95% intervals. Commit {esc(str(machine.get('git_commit', '?'))[:12])}, "
            f"{esc(machine.get('cpu_model', '?'))} ({esc(machine.get('cpu_cores', '?'))} cores), "
            f"torch {esc(machine.get('torch_version', '?'))}, {esc(machine.get('date_utc', ''))}."
            "</p>"
        )
    (out / "img").mkdir(parents=True, exist_ok=True)
    facts["benchmark"] = {}
    for regime, part in frame.groupby("regime", sort=False):
        regime = str(regime)
        parts.append(f"<h3>{esc(regime)} ({esc(_REGIME_TITLES.get(regime, regime))})</h3>")
        rows = pd.DataFrame(
            {
                **_comparison_columns(part),
                "sens. new": [
                    format_cell(v) for v in part.get("sensitivity_new", [math.nan] * len(part))
                ],
                "steps": [
                    format_cell(v, 0) for v in part.get("train_steps", [math.nan] * len(part))
                ],
            }
        )
        parts.append(_html_table(rows))
        parts.append(_other_targets(bench, regime))
        png = bench / f"froc_{regime}.png"
        if png.is_file():
            shutil.copyfile(png, out / "img" / png.name)
            parts.append(figure(f"img/{png.name}", f"FROC curves, {regime} labels"))
        facts["benchmark"][regime] = rows.to_dict(orient="records")
    return "".join(parts)


def build_benchmark_report(
    bench_dir: str | Path, out_dir: str | Path, *, title: str = "metstrack benchmark"
) -> Path:
    """A report of the benchmark section alone; returns the path of ``index.html``.

    Raises:
        DatasetError: No readable ``froc.csv`` in ``bench_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts: dict = {"title": title}
    body = benchmark_section(bench_dir, out, facts)
    index = out / "index.html"
    write_text_atomic(index, page(title, body))
    write_json_atomic(out / "report.json", facts)
    return index
