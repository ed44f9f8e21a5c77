"""The leaderboard: one row per model, written as CSV, Markdown and JSON with provenance.

Columns (:data:`COLUMNS`, in order; rates in [0, 1], NaN where undefined):

==============================  ==================================================
``model``                       row name from the config
``network``, ``prior_mask``     registry name and prior-mask switch
``regime``, ``seed``            label regime and training seed of the run
``sensitivity_lt10_mm3``        pooled sensitivity for reference lesions < 10 mm3
``sensitivity_10_100_mm3`` ...  the other volume strata (from ``evaluation.volume_bins_mm3``)
``*_ci_low``, ``*_ci_high``     patient-level bootstrap interval of the < 10 mm3
                                sensitivity and of FP per scan
``lesion_sensitivity``          pooled over all sizes
``fp_per_scan``                 false-positive lesions per test study
``lesion_f1``                   pooled 2 TP / (2 TP + FP + FN)
``lesionwise_dice``             BraTS-METS penalised lesion-wise Dice (mean over studies)
``dice``                        voxel Dice (mean over studies where defined)
``hd95_mm``                     voxel HD95 in mm (mean over studies where defined)
``tracking_link_accuracy``      tracked predictions vs ground-truth identities
``identity_switch_rate``        identity switches / true correspondences
``train_steps``                 optimizer steps reached within the budget
``train_time_s``                wall-clock training seconds (validation included)
``infer_time_per_study_s``      wall-clock seconds per test study (read, predict, write)
``parameters``                  trainable parameters
``train_peak_rss_mb``           peak resident memory while training (MiB)
``infer_peak_rss_mb``           peak resident memory while predicting (MiB)
``n_test_patients``, ...        what was evaluated
==============================  ==================================================

Provenance columns repeated on every CSV row and listed above the Markdown
table: git commit, CPU model, cores, torch version, Python, date, load average.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metstrack.core.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from metstrack.metrics.detection import DEFAULT_VOLUME_BINS_MM3, bin_label

#: The evaluation's default lesion-volume strata (mm3).
DEFAULT_BINS: tuple[float, ...] = DEFAULT_VOLUME_BINS_MM3

#: Leaderboard files written by :func:`write_leaderboard`.
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_JSON = "leaderboard.json"

#: Columns before the strata.
_HEAD = ("model", "network", "prior_mask")
#: Columns after the strata (in order).
_TAIL = (
    "sensitivity_lt10_mm3_ci_low",
    "sensitivity_lt10_mm3_ci_high",
    "lesion_sensitivity",
    "fp_per_scan",
    "fp_per_scan_ci_low",
    "fp_per_scan_ci_high",
    "lesion_f1",
    "lesionwise_dice",
    "dice",
    "hd95_mm",
    "tracking_link_accuracy",
    "identity_switch_rate",
    "train_steps",
    "train_stopped_by",
    "train_time_s",
    "infer_time_per_study_s",
    "parameters",
    "train_peak_rss_mb",
    "infer_peak_rss_mb",
    "n_test_patients",
    "n_test_studies",
    "n_ref_lesions",
    "n_ref_lesions_lt10_mm3",
    "regime",
    "seed",
)
#: Provenance columns (same value on every row).
PROVENANCE = (
    "git_commit",
    "cpu_model",
    "cpu_cores",
    "torch_version",
    "torch_threads",
    "python_version",
    "platform",
    "load_average_1min",
    "date_utc",
    "config_fingerprint",
    "metstrack_version",
)


def stratum_column(lo: float, hi: float) -> str:
    """Column name of a lesion-volume stratum: ``sensitivity_lt10_mm3``, ``sensitivity_10_100_mm3``,
    ``sensitivity_ge1000_mm3``."""

    def f(x: float) -> str:
        return f"{x:g}".replace(".", "p")

    if lo <= 0:
        return f"sensitivity_lt{f(hi)}_mm3"
    if math.isinf(hi):
        return f"sensitivity_ge{f(lo)}_mm3"
    return f"sensitivity_{f(lo)}_{f(hi)}_mm3"


def strata(volume_bins_mm3: Sequence[float]) -> list[tuple[str, str]]:
    """``(metric stratum name, leaderboard column)`` per stratum, smallest first."""
    bins = list(volume_bins_mm3)
    return [
        (bin_label(lo, hi), stratum_column(lo, hi))
        for lo, hi in zip(bins[:-1], bins[1:], strict=True)
    ]


def columns(volume_bins_mm3: Sequence[float]) -> list[str]:
    """Every leaderboard column in order (the < 10 mm3 stratum first among the metrics)."""
    return [*_HEAD, *(c for _, c in strata(volume_bins_mm3)), *_TAIL, *PROVENANCE]


@dataclass(frozen=True)
class Machine:
    """Where a benchmark ran (written with every leaderboard)."""

    git_commit: str
    cpu_model: str
    cpu_cores: int
    torch_version: str
    torch_threads: int
    python_version: str
    platform: str
    load_average_1min: float
    date_utc: str


def git_commit(repo: str | Path | None = None) -> str:
    """The checked-out commit of the repository holding ``repo`` (default: this package).

    ``-dirty`` is appended when tracked files under ``src/`` or ``configs/`` differ
    from it; ``"unknown"`` outside a git checkout.
    """
    where = Path(repo) if repo is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "src", "configs"], cwd=top, check=False
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> Machine:
    """Commit, CPU model, usable cores, torch version and threads, Python, load, date."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = math.nan
    return Machine(
        git_commit=git_commit(),
        cpu_model=cpu_model(),
        cpu_cores=cores,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        python_version=platform.python_version(),
        platform=platform.platform(),
        load_average_1min=round(load, 2),
        date_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def leaderboard_frame(
    rows: Sequence[Mapping[str, object]],
    *,
    volume_bins_mm3: Sequence[float],
    provenance: Mapping[str, object],
) -> pd.DataFrame:
    """One row per model with every column of :func:`columns` (missing values are NaN).

    Args:
        rows: Per-model values keyed by column name (see :mod:`metstrack.benchmark.runner`).
        volume_bins_mm3: Stratum edges used by the evaluation.
        provenance: Values of the :data:`PROVENANCE` columns.
    """
    cols = columns(volume_bins_mm3)
    frame = pd.DataFrame(
        [{**{c: math.nan for c in cols}, **dict(r), **dict(provenance)} for r in rows]
    )
    return frame[cols]


def _fmt(v: object, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(row: pd.Series, name: str) -> str:
    lo, hi = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    text = _fmt(row[name])
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.2f}, {hi:.2f}]"
    return text


def markdown(frame: pd.DataFrame, *, volume_bins_mm3: Sequence[float], title: str) -> str:
    """The leaderboard as a Markdown page: provenance list, detection table, cost table."""
    strat = strata(volume_bins_mm3)
    first = frame.iloc[0] if len(frame) else None
    lines = [f"# {title}", ""]
    if first is not None:
        lines += [
            f"- commit: `{first['git_commit']}`",
            f"- machine: {first['cpu_model']}, {first['cpu_cores']} cores, "
            f"load average {first['load_average_1min']} at the start",
            f"- torch {first['torch_version']} ({first['torch_threads']} threads per model), "
            f"Python {first['python_version']}, {first['platform']}",
            f"- date: {first['date_utc']}; config fingerprint `{first['config_fingerprint']}`; "
            f"metstrack {first['metstrack_version']}",
            f"- test set: {_fmt(_int(first['n_test_patients']))} patients, "
            f"{_fmt(_int(first['n_test_studies']))} studies, {_fmt(_int(first['n_ref_lesions']))} reference "
            f"lesions ({_fmt(_int(first['n_ref_lesions_lt10_mm3']))} under 10 mm3)",
            "",
        ]
    sens_names = [f"sens. {label.replace(',', '-')} mm3" for label, _ in strat]
    head = [
        "model",
        *sens_names,
        "FP/scan",
        "lesion F1",
        "lesion-wise Dice",
        "voxel Dice",
        "HD95 mm",
        "tracking link acc.",
    ]
    lines += ["## Detection and segmentation (test patients)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in frame.iterrows():
        cells = [str(r["model"])]
        for i, (_, col) in enumerate(strat):
            if i == 0:
                cells.append(_ci(r, col))
            else:
                cells.append(_fmt(r[col]))
        cells += [
            _ci(r, "fp_per_scan"),
            _fmt(r["lesion_f1"]),
            _fmt(r["lesionwise_dice"]),
            _fmt(r["dice"]),
            _fmt(r["hd95_mm"], 1),
            _fmt(r["tracking_link_accuracy"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    cost = [
        "model",
        "network",
        "prior mask",
        "steps",
        "stopped by",
        "train s",
        "infer s/study",
        "parameters",
        "train peak MiB",
        "infer peak MiB",
    ]
    lines += ["", "## Cost (equal budget per model)", ""]
    lines += ["| " + " | ".join(cost) + " |", "|" + "---|" * len(cost)]
    for _, r in frame.iterrows():
        cells = [
            str(r["model"]),
            str(r["network"]),
            _fmt(bool(r["prior_mask"])),
            _fmt(_int(r["train_steps"])),
            str(r["train_stopped_by"]),
            _fmt(r["train_time_s"], 1),
            _fmt(r["infer_time_per_study_s"], 2),
            _fmt(_int(r["parameters"])),
            _fmt(r["train_peak_rss_mb"], 0),
            _fmt(r["infer_peak_rss_mb"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _target_lines(frame)
    lines += [
        "",
        "Sensitivities and FP/scan are pooled over test studies with patient-level bootstrap "
        "intervals in brackets; Dice and HD95 are means over studies where defined. "
        "Memory is peak resident set size (VmHWM) of the process, Python and torch included. "
        "See docs/benchmark.md for definitions; leaderboard.csv holds every column.",
        "",
    ]
    return "\n".join(lines)


def target_met(frame: pd.DataFrame, *, model: str = "stt", ablation: str = "unet") -> bool | None:
    """The issue's target: ``model`` beats ``ablation`` on < 10 mm3 sensitivity at equal or
    fewer false positives per scan. ``None`` when either row is absent or undefined."""
    rows = {r["model"]: r for _, r in frame.iterrows()}
    if model not in rows or ablation not in rows:
        return None
    a, b = rows[model], rows[ablation]
    vals = (
        a["sensitivity_lt10_mm3"],
        b["sensitivity_lt10_mm3"],
        a["fp_per_scan"],
        b["fp_per_scan"],
    )
    if any(isinstance(v, float) and math.isnan(v) for v in vals):
        return None
    return bool(vals[0] > vals[1] and vals[2] <= vals[3])


def _target_lines(frame: pd.DataFrame) -> list[str]:
    met = target_met(frame)
    if met is None:
        return []
    rows = {r["model"]: r for _, r in frame.iterrows()}
    a, b = rows["stt"], rows["unet"]
    return [
        "",
        "## Target",
        "",
        f"STT beats the same backbone without memory on < 10 mm3 sensitivity at equal or fewer "
        f"false positives per scan: **{'met' if met else 'not met'}** (stt "
        f"{_fmt(a['sensitivity_lt10_mm3'])} at {_fmt(a['fp_per_scan'], 2)} FP/scan, unet "
        f"{_fmt(b['sensitivity_lt10_mm3'])} at {_fmt(b['fp_per_scan'], 2)} FP/scan).",
    ]


def _int(v: object) -> object:
    if isinstance(v, float) and math.isnan(v):
        return v
    return int(v)  # type: ignore[call-overload]


def write_leaderboard(
    frame: pd.DataFrame,
    out_dir: str | Path,
    *,
    volume_bins_mm3: Sequence[float],
    title: str = "metstrack benchmark leaderboard",
) -> dict[str, Path]:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.json`` atomically.

    Returns:
        Paths keyed ``"csv"``, ``"md"``, ``"json"``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / LEADERBOARD_CSV,
        "md": out / LEADERBOARD_MD,
        "json": out / LEADERBOARD_JSON,
    }
    write_csv_atomic(paths["csv"], frame)
    write_text_atomic(paths["md"], markdown(frame, volume_bins_mm3=volume_bins_mm3, title=title))
    records = json.loads(frame.to_json(orient="records"))
    write_json_atomic(paths["json"], {"rows": records})
    return paths
