"""FROC comparison of the benchmark's arms at a common false-positive rate.

For every trained run (arm x label regime x seed) the benchmark predicts the
validation and the test patients and keeps the probability maps. This module:

1. turns them into per-scan detections at every threshold of a grid
   (:func:`run_scans`, :func:`metstrack.metrics.froc.scan_froc`), against the
   cohort's true lesion instance maps, with each lesion flagged *new* when it
   appears after the patient's baseline study (``ground_truth/lesion_trajectories.csv``);
2. picks each run's operating threshold on its **validation** patients, the
   lowest threshold at which validation FP/scan is at most the common target
   (:func:`metstrack.metrics.froc.operating_threshold`); the test patients are
   never used to choose anything;
3. reports on the **test** patients, per arm and regime, pooled over seeds:
   sensitivity (all sizes, < 10 mm3, new lesions) and FP/scan at the operating
   points, the paired patient-level bootstrap CI of the difference to the
   reference arm, and the pooled FROC curves (CSV and a PNG per regime).

Files (in the benchmark folder): ``froc.csv``, ``froc.md``, ``froc_curves.csv``,
``froc_<regime>.png``, ``froc_targets.csv`` (with ``[froc] other_targets``);
per run ``<run>/froc.json`` (the detections).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.benchmark.config import FrocSettings
from metstrack.core import schema
from metstrack.core.atomic import (
    atomic_path,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from metstrack.errors import DatasetError
from metstrack.io.nifti import find_nifti, read_label, read_volume
from metstrack.io.tracks import GT_INSTANCES_DIR
from metstrack.metrics.detection import SMALL_LESION_MM3
from metstrack.metrics.froc import (
    DEFAULT_MIN_IOU,
    ScanFROC,
    Stratum,
    at_operating_point,
    froc_curve,
    operating_threshold,
    paired_bootstrap_difference,
    scan_froc,
    stratum_all,
    stratum_new,
    stratum_volume,
)

#: Strata reported, by column suffix.
STRATA: dict[str, Stratum] = {
    "all": stratum_all,
    "lt10_mm3": stratum_volume(0.0, SMALL_LESION_MM3),
    "new": stratum_new,
}
FROC_CSV = "froc.csv"
FROC_MD = "froc.md"
CURVES_CSV = "froc_curves.csv"
TARGETS_CSV = "froc_targets.csv"
RUN_FILE = "froc.json"


def new_lesion_flags(data_dir: Path) -> dict[str, set[int]]:
    """Per patient, the IDs of lesions that appear after the baseline study (``kind == "new"``)."""
    path = data_dir / schema.GROUND_TRUTH_DIR / "lesion_trajectories.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; the FROC comparison needs the synthetic ground truth")
    table = pd.read_csv(path)
    new = table[table["kind"] == "new"]
    out: dict[str, set[int]] = {}
    for pid, lid in zip(new["PatientID"], new["lesion_id"], strict=True):
        out.setdefault(str(pid), set()).add(int(lid))
    return out


def run_scans(
    data_dir: Path,
    pred_root: Path,
    patients: Mapping[str, Sequence[str]],
    *,
    thresholds: Sequence[float],
    min_volume_mm3: float = 0.0,
    new_lesions: Mapping[str, set[int]] | None = None,
    min_iou: float = DEFAULT_MIN_IOU,
) -> list[ScanFROC]:
    """Per-scan detections of one run: its probability maps against the true instance maps.

    Args:
        data_dir: The benchmark cohort (release layout with ``ground_truth/``).
        pred_root: The run's prediction folder (``prob.nii.gz`` per study).
        patients: StudyIDs per PatientID to score.
        thresholds: The FROC grid.
        min_volume_mm3: Predicted components smaller than this are dropped.
        new_lesions: :func:`new_lesion_flags` (read from ``data_dir`` when ``None``).
        min_iou: IoU from which a component detects a lesion (:func:`scan_froc`).

    Raises:
        DatasetError: A probability map or instance map is missing.
    """
    new = new_lesion_flags(data_dir) if new_lesions is None else new_lesions
    scans = []
    for pid, study_ids in patients.items():
        gt_dir = data_dir / schema.GROUND_TRUTH_DIR / GT_INSTANCES_DIR / pid
        for sid in study_ids:
            prob_path = find_nifti(schema.prediction_dir(pred_root, pid, sid), "prob")
            gt_path = find_nifti(gt_dir, sid)
            if prob_path is None or gt_path is None:
                what = "probability map" if prob_path is None else "ground-truth instance map"
                raise DatasetError(f"patient {pid} study {sid}: missing {what} for the FROC")
            gt = read_label(gt_path, binary=False)
            prob = read_volume(prob_path)
            values = np.unique(gt.array[gt.array > 0])
            flags = [int(v) in new.get(pid, set()) for v in values]
            scans.append(
                scan_froc(
                    prob.array,
                    gt.array,
                    voxel_volume_mm3=float(np.prod(gt.spacing_mm)),
                    patient_id=pid,
                    thresholds=thresholds,
                    min_volume_mm3=min_volume_mm3,
                    ref_new=flags,
                    min_iou=min_iou,
                )
            )
    return scans


def save_scans(path: Path, validation: Sequence[ScanFROC], test: Sequence[ScanFROC]) -> None:
    """Write a run's detections as JSON (atomically)."""

    def enc(s: ScanFROC) -> dict:
        return {
            "patient_id": s.patient_id,
            "thresholds": s.thresholds.tolist(),
            "detected": s.detected.astype(int).tolist(),
            "false_positives": s.false_positives.tolist(),
            "ref_volumes_mm3": s.ref_volumes_mm3.tolist(),
            "ref_new": s.ref_new.astype(int).tolist(),
        }

    write_json_atomic(
        path, {"validation": [enc(s) for s in validation], "test": [enc(s) for s in test]}
    )


def load_scans(path: Path) -> tuple[list[ScanFROC], list[ScanFROC]]:
    """Read what :func:`save_scans` wrote: (validation, test)."""
    raw = json.loads(path.read_text(encoding="utf-8"))

    def dec(d: dict) -> ScanFROC:
        n_th = len(d["thresholds"])
        return ScanFROC(
            patient_id=d["patient_id"],
            thresholds=np.asarray(d["thresholds"], float),
            detected=np.asarray(d["detected"], bool).reshape(n_th, len(d["ref_volumes_mm3"])),
            false_positives=np.asarray(d["false_positives"], np.int64),
            ref_volumes_mm3=np.asarray(d["ref_volumes_mm3"], float),
            ref_new=np.asarray(d["ref_new"], bool),
        )

    return [dec(d) for d in raw["validation"]], [dec(d) for d in raw["test"]]


@dataclass(frozen=True)
class RunDetections:
    """One trained run's detections on validation and test patients."""

    regime: str
    arm: str
    seed: int
    validation: list[ScanFROC]
    test: list[ScanFROC]
    train_steps: int = 0
    train_time_s: float = math.nan
    train_peak_rss_mb: float = math.nan


def comparison_tables(
    runs: Sequence[RunDetections], settings: FrocSettings, *, curves: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The FROC table (one row per regime and arm) and the pooled curves.

    Returns:
        ``(table, curves)``. ``table`` columns: regime, arm, seeds, thresholds
        (per seed), validation FP/scan, test sensitivity per stratum with the
        number of reference lesions, test FP/scan, the difference to the
        reference arm per stratum with its CI, steps, wall time and peak memory
        (means over seeds). ``curves``: regime, arm, threshold, stratum,
        sensitivity, FP/scan (test, pooled over seeds); empty when ``curves`` is False.
    """
    rows, curve_rows = [], []
    by_key: dict[tuple[str, str], list[RunDetections]] = {}
    for r in runs:
        by_key.setdefault((r.regime, r.arm), []).append(r)
    ops: dict[tuple[str, str], list[tuple[list[ScanFROC], float]]] = {}
    for key, group in by_key.items():
        ops[key] = [
            (g.test, operating_threshold(g.validation, settings.fp_per_scan_target)) for g in group
        ]
    for (regime, arm), group in by_key.items():
        runs_op = ops[(regime, arm)]
        row: dict[str, object] = {
            "regime": regime,
            "arm": arm,
            "seeds": ",".join(str(g.seed) for g in group),
            "thresholds": ",".join(f"{t:g}" for _, t in runs_op),
            "val_fp_per_scan": float(
                np.mean(
                    [
                        at_operating_point([(g.validation, t)])[1]
                        for g, (_, t) in zip(group, runs_op, strict=True)
                    ]
                )
            ),
        }
        for name, stratum in STRATA.items():
            sens, fp = at_operating_point(runs_op, stratum)
            row[f"sensitivity_{name}"] = sens
            row[f"n_lesions_{name}"] = sum(
                int(stratum(s.ref_volumes_mm3, s.ref_new).sum()) for s in group[0].test
            )
            ref_key = (regime, settings.reference)
            if arm != settings.reference and ref_key in ops:
                d = paired_bootstrap_difference(
                    runs_op, ops[ref_key], stratum=stratum,
                    n_bootstrap=settings.n_bootstrap, seed=settings.seed,
                )  # fmt: skip
                row[f"diff_{name}"], row[f"diff_{name}_ci_low"], row[f"diff_{name}_ci_high"] = (
                    d.difference, d.ci_low, d.ci_high,
                )  # fmt: skip
            else:
                row[f"diff_{name}"] = row[f"diff_{name}_ci_low"] = row[f"diff_{name}_ci_high"] = (
                    math.nan
                )
        row["fp_per_scan"] = at_operating_point(runs_op)[1]
        row["train_steps"] = float(np.mean([g.train_steps for g in group]))
        row["train_time_s"] = float(np.mean([g.train_time_s for g in group]))
        row["train_peak_rss_mb"] = float(np.max([g.train_peak_rss_mb for g in group]))
        rows.append(row)
        if not curves:
            continue
        pooled = [s for g in group for s in g.test]
        for name, stratum in STRATA.items():
            c = froc_curve(pooled, stratum)
            for t, sens, fp in zip(c.thresholds, c.sensitivity, c.fp_per_scan, strict=True):
                curve_rows.append(
                    {"regime": regime, "arm": arm, "stratum": name, "threshold": float(t),
                     "sensitivity": float(sens), "fp_per_scan": float(fp)}
                )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(curve_rows)


def format_cell(v: object, digits: int = 2) -> str:
    """A table cell: floats with ``digits`` decimals, NaN as ``n/a``."""
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_diff(row: pd.Series, name: str) -> str:
    """``+d [lo, hi]`` of a FROC row's difference ``name``; ``(reference)`` where undefined."""
    d = row[f"diff_{name}"]
    if isinstance(d, float) and math.isnan(d):
        return "(reference)"
    return f"{d:+.2f} [{row[f'diff_{name}_ci_low']:+.2f}, {row[f'diff_{name}_ci_high']:+.2f}]"


def froc_markdown(table: pd.DataFrame, settings: FrocSettings) -> str:
    """The FROC table as Markdown, one section per regime."""
    lines = [
        "# FROC comparison at a common false-positive rate",
        "",
        f"Each run's threshold is the lowest on the grid whose FP/scan on its validation patients "
        f"is at most {settings.fp_per_scan_target:g}; sensitivities and FP/scan are on the test "
        "patients, pooled over seeds. Differences are to the reference arm "
        f"`{settings.reference}` with {settings.n_bootstrap}-replicate paired patient-level "
        "bootstrap 95% intervals. A lesion is detected when a predicted component overlaps it "
        f"with an IoU of at least {settings.min_iou:g}; a component that detects none is a "
        "false positive.",
        "",
    ]
    for regime, part in table.groupby("regime", sort=False):
        title = {
            "all": "every study labelled",
            "radiosurgery": "label-scarce: only radiosurgery studies labelled",
        }
        lines += [f"## Regime: {regime} ({title.get(regime, regime)})", ""]
        head = ["arm", "seeds", "thresholds", "val FP/scan", "test FP/scan",
                f"sens. all (n={int(part['n_lesions_all'].iloc[0])})", "diff",
                f"sens. < 10 mm3 (n={int(part['n_lesions_lt10_mm3'].iloc[0])})", "diff",
                f"sens. new (n={int(part['n_lesions_new'].iloc[0])})", "diff",
                "steps", "train s", "peak MiB"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in part.iterrows():
            cells = [str(r["arm"]), str(r["seeds"]), str(r["thresholds"]), format_cell(r["val_fp_per_scan"]),
                     format_cell(r["fp_per_scan"]), format_cell(r["sensitivity_all"]), format_diff(r, "all"),
                     format_cell(r["sensitivity_lt10_mm3"]), format_diff(r, "lt10_mm3"), format_cell(r["sensitivity_new"]),
                     format_diff(r, "new"), format_cell(r["train_steps"], 0), format_cell(r["train_time_s"], 0),
                     format_cell(r["train_peak_rss_mb"], 0)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def other_targets_table(runs: Sequence[RunDetections], settings: FrocSettings) -> pd.DataFrame:
    """The comparison repeated at each of ``settings.other_targets`` (one row per target,
    regime and arm; the columns of :func:`comparison_tables` plus ``fp_per_scan_target``)."""
    parts = []
    for target in settings.other_targets:
        table, _ = comparison_tables(
            runs, replace(settings, fp_per_scan_target=float(target)), curves=False
        )
        table.insert(0, "fp_per_scan_target", float(target))
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def other_targets_markdown(table: pd.DataFrame, settings: FrocSettings) -> str:
    """``table`` of :func:`other_targets_table` as Markdown, one section per regime."""
    if table.empty:
        return ""
    lines = [
        "## Other operating points",
        "",
        "The same comparison with each run's threshold picked on validation at other "
        f"FP/scan targets ({', '.join(f'{t:g}' for t in settings.other_targets)}).",
        "",
    ]
    for regime, part in table.groupby("regime", sort=False):
        lines += [f"### Regime: {regime}", ""]
        head = ["target FP/scan", "arm", "thresholds", "test FP/scan", "sens. all", "diff",
                "sens. < 10 mm3", "diff", "sens. new", "diff"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in part.iterrows():
            cells = [f"{r['fp_per_scan_target']:g}", str(r["arm"]), str(r["thresholds"]),
                     format_cell(r["fp_per_scan"]), format_cell(r["sensitivity_all"]), format_diff(r, "all"),
                     format_cell(r["sensitivity_lt10_mm3"]), format_diff(r, "lt10_mm3"),
                     format_cell(r["sensitivity_new"]), format_diff(r, "new")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(curves: pd.DataFrame, out: Path, regime: str) -> Path:
    """FROC curves of one regime (all sizes and < 10 mm3 side by side) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = curves[curves["regime"] == regime]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (name, title) in zip(
        axes, (("all", "all lesions"), ("lt10_mm3", "lesions < 10 mm3")), strict=True
    ):
        for arm, c in part[part["stratum"] == name].groupby("arm", sort=False):
            c = c.sort_values("fp_per_scan")
            ax.plot(c["fp_per_scan"], c["sensitivity"], marker="o", ms=3, label=arm)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("false positives per scan (test)")
        ax.set_title(f"{title} ({regime} labels)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("lesion sensitivity (test)")
    axes[0].set_ylim(0, 1)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / f"froc_{regime}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_froc(runs: Sequence[RunDetections], out: Path, settings: FrocSettings) -> dict[str, Path]:
    """Write ``froc.csv``, ``froc.md``, ``froc_curves.csv``, one PNG per regime and,
    with ``settings.other_targets``, ``froc_targets.csv``."""
    table, curves = comparison_tables(runs, settings)
    paths = {"csv": out / FROC_CSV, "md": out / FROC_MD, "curves": out / CURVES_CSV}
    write_csv_atomic(paths["csv"], table)
    write_csv_atomic(paths["curves"], curves)
    md = froc_markdown(table, settings)
    if settings.other_targets:
        others = other_targets_table(runs, settings)
        paths["targets"] = out / TARGETS_CSV
        write_csv_atomic(paths["targets"], others)
        md = md + "\n" + other_targets_markdown(others, settings)
    write_text_atomic(paths["md"], md)
    for regime in table["regime"].unique():
        paths[f"png_{regime}"] = plot_curves(curves, out, str(regime))
    return paths
