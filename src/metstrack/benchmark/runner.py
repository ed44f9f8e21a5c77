"""Run the benchmark: one seeded synthetic cohort, every model under one budget, one leaderboard.

Output folder::

    <out>/config.json                     resolved BenchmarkConfig, fingerprint, machine
    <out>/cohort/                         the synthetic cohort (release layout + ground_truth/)
    <out>/cache/                          the training study cache every run shares
    <out>/models/<name>/run/              training run (metstrack.train.api.train)
    <out>/models/<name>/pred/             test-patient predictions (metstrack.infer)
    <out>/models/<name>/train_stage.json  the finished training (resume point before predicting)
    <out>/models/<name>/stage.json        steps, times, parameters, peak memory
    <out>/models/<name>/evaluation/       metstrack.workflows.evaluate.write_outputs tables
    <out>/models/<name>/tracking.json     tracking accuracy against ground-truth identities
    <out>/models/<name>/row.json          its leaderboard row and the fingerprints it came from
    <out>/models/<name>/worker.log        log of the model's subprocess (isolated runs)
    <out>/leaderboard.{csv,md,json}       one row per model (metstrack.benchmark.leaderboard)

A rerun with the same config reuses the cohort and every model whose
``stage.json`` matches the model's fingerprint (training settings, budget,
inference settings and cohort), so an interrupted benchmark resumes at the
first unfinished model. Each run's leaderboard row is saved in
``<model>/row.json`` with the fingerprints it came from (stage, evaluation and
tracking settings, test patients, metstrack version) and reused while they
match, so a final pass over runs made by side-by-side processes only writes
the tables.

Peak memory: each stage (training, inference) first resets the kernel's peak
resident-set counter of the process (``/proc/self/clear_refs`` = 5) and reads
``VmHWM`` at its end; where that reset is not available it falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (then the inference figure is
the maximum over both stages). With ``budget.isolate`` every model runs in a
fresh spawned subprocess, so the figure is that model's alone (Python and torch
included, about 300-400 MiB on CPU).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from metstrack import __version__
from metstrack.benchmark.config import (
    BenchmarkConfig,
    ModelEntry,
    model_train_config,
    run_seeds,
    select_models,
)
from metstrack.benchmark.froc_report import (
    RUN_FILE,
    RunDetections,
    load_scans,
    new_lesion_flags,
    run_scans,
    save_scans,
    write_froc,
)
from metstrack.benchmark.leaderboard import (
    describe_machine,
    leaderboard_frame,
    strata,
    stratum_column,
    write_leaderboard,
)
from metstrack.benchmark.model_run import (
    STAGE_FILE,
    StageResult,
    model_fingerprint,
    peak_rss_mb,
    read_stage,
    reset_peak_rss,
    run_isolated,
    train_and_predict,
)
from metstrack.config import config_fingerprint, save_config, to_dict
from metstrack.core import schema
from metstrack.core.atomic import write_json_atomic
from metstrack.errors import ConfigError, DatasetError
from metstrack.io.nifti import find_nifti, read_label
from metstrack.io.release import read_release
from metstrack.io.tracks import GT_INSTANCES_DIR
from metstrack.metrics.detection import SMALL_LESION_MM3, bin_label
from metstrack.tracking.accuracy import TrackingAccuracy, tracking_accuracy
from metstrack.tracking.tracker import track_patient
from metstrack.workflows.evaluate import evaluate_cohort, write_outputs
from metstrack.workflows.synth import generate_cohort

log = logging.getLogger(__name__)

#: A run's leaderboard row, keyed by its stage fingerprint and the evaluation settings.
ROW_FILE = "row.json"

#: Marker written in the cohort folder once generation finished (holds the fingerprint).
COHORT_MARKER = ".benchmark_cohort.json"


@dataclass(frozen=True)
class BenchmarkResult:
    """What :func:`run_benchmark` produced.

    Attributes:
        out_dir: The benchmark folder.
        leaderboard: One row per model (columns of :func:`metstrack.benchmark.leaderboard.columns`).
        paths: Leaderboard files keyed ``"csv"``, ``"md"``, ``"json"``.
    """

    out_dir: Path
    leaderboard: pd.DataFrame
    paths: dict[str, Path]


# ---------------------------------------------------------------- evaluation and tracking


def evaluate_model(
    cfg: BenchmarkConfig, data_dir: Path, pred_root: Path, test_ids: Sequence[str], out: Path
):
    """Evaluate one model's predictions on the test patients' studies (every study is labelled).

    Returns:
        The :class:`metstrack.workflows.evaluate.CohortEvaluation` (tables written to ``out``).
    """
    result = evaluate_cohort(pred_root, data_dir, cfg.evaluation, patients=test_ids)
    write_outputs(result, out, predictions=str(pred_root), reference=str(data_dir))
    return result


def track_model(cfg: BenchmarkConfig, cohort, pred_root: Path, test_ids: Sequence[str]):
    """Track each test patient's predicted masks and score them against ground-truth identities.

    Returns:
        The summed :class:`metstrack.tracking.accuracy.TrackingAccuracy`.
    """
    total = TrackingAccuracy()
    for pid in test_ids:
        patient = cohort.patient(pid)
        masks, truth = [], []
        gt_dir = cohort.root / schema.GROUND_TRUTH_DIR / GT_INSTANCES_DIR / pid
        for st in patient.studies:
            mask = find_nifti(
                schema.prediction_dir(pred_root, pid, st.study_id), schema.PREDICTION_MASK
            )
            gt = find_nifti(gt_dir, st.study_id)
            if mask is None or gt is None:
                raise DatasetError(
                    f"patient {pid} study {st.study_id}: missing "
                    f"{'prediction mask' if mask is None else 'ground-truth instance map'}"
                )
            masks.append(read_label(mask))
            truth.append(read_label(gt, binary=False).array)
        days = [
            float(s.days_from_baseline - patient.studies[0].days_from_baseline)
            for s in patient.studies
        ]
        res = track_patient(
            masks,
            days,
            config=cfg.tracking,
            patient_id=pid,
            study_ids=[s.study_id for s in patient.studies],
        )
        total = total + tracking_accuracy(res.tracked_maps, truth)
    return total


def _metric(summary, name: str) -> tuple[float, float, float]:
    m = summary.metric(name)
    return float(m.value), float(m.ci_low), float(m.ci_high)


def leaderboard_row(
    entry: ModelEntry,
    stage: StageResult,
    evaluation,
    tracking,
    cfg: BenchmarkConfig,
    n_patients: int,
) -> dict[str, object]:
    """One leaderboard row from a model's stage record, evaluation and tracking accuracy."""
    s = evaluation.summary
    row: dict[str, object] = {
        "model": entry.name,
        "network": entry.network,
        "prior_mask": bool(entry.prior_mask),
    }
    for label, col in strata(cfg.evaluation.volume_bins_mm3):
        row[col] = _metric(s, f"sensitivity_{label}")[0]
    small = bin_label(0.0, SMALL_LESION_MM3)
    small_col = stratum_column(0.0, SMALL_LESION_MM3)
    _, row[f"{small_col}_ci_low"], row[f"{small_col}_ci_high"] = _metric(s, f"sensitivity_{small}")
    row["lesion_sensitivity"] = _metric(s, "lesion_sensitivity")[0]
    row["fp_per_scan"], row["fp_per_scan_ci_low"], row["fp_per_scan_ci_high"] = _metric(
        s, "fp_per_scan"
    )
    for name in ("lesion_f1", "lesionwise_dice", "dice", "hd95_mm"):
        row[name] = _metric(s, name)[0]
    row["tracking_link_accuracy"] = tracking.link_accuracy
    row["identity_switch_rate"] = tracking.identity_switch_rate
    n_studies = max(stage.n_studies, 1)
    row.update(
        train_steps=stage.train_steps,
        train_stopped_by=stage.train_stopped_by,
        train_time_s=stage.train_time_s,
        infer_time_per_study_s=stage.infer_time_s / n_studies,
        parameters=stage.parameters,
        train_peak_rss_mb=stage.train_peak_rss_mb,
        infer_peak_rss_mb=stage.infer_peak_rss_mb,
        n_test_patients=n_patients,
        n_test_studies=len(evaluation.studies),
        n_ref_lesions=int(sum(e.detection.tp + e.detection.fn for e in evaluation.studies)),
        n_ref_lesions_lt10_mm3=int(sum(e.stratum(small).n_ref for e in evaluation.studies)),
    )
    return row


# ---------------------------------------------------------------- the whole benchmark


def _cached_row(model_dir: Path, key: dict[str, object]) -> dict[str, object] | None:
    """A run's leaderboard row saved by an earlier pass with the same ``key``, else None."""
    path = model_dir / ROW_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("key") != key:
        return None
    return {k: math.nan if v is None else v for k, v in saved["row"].items()}


def _run_detections(
    cfg: BenchmarkConfig,
    cohort,
    data_dir: Path,
    model_dir: Path,
    stage: StageResult,
    key: tuple[str, str, int],
    test_ids: Sequence[str],
    val_ids: Sequence[str],
    new_lesions: dict[str, set[int]],
) -> RunDetections:
    """One run's FROC detections on validation and test patients (cached in ``froc.json``)."""
    path = model_dir / RUN_FILE
    marker = {
        "fingerprint": stage.fingerprint,
        "thresholds": list(cfg.froc.thresholds),
        "min_iou": cfg.froc.min_iou,
    }
    key_path = model_dir / (RUN_FILE + ".key")
    cached = None
    if (
        path.is_file()
        and key_path.is_file()
        and json.loads(key_path.read_text(encoding="utf-8")) == marker
    ):
        cached = load_scans(path)
    if cached is None:
        pred_root = model_dir / "pred"

        def studies(ids: Sequence[str]) -> dict[str, list[str]]:
            return {pid: [s.study_id for s in cohort.patient(pid).studies] for pid in ids}

        common = {
            "thresholds": cfg.froc.thresholds,
            "new_lesions": new_lesions,
            "min_iou": cfg.froc.min_iou,
        }
        val = run_scans(data_dir, pred_root, studies(val_ids), **common)
        test = run_scans(data_dir, pred_root, studies(test_ids), **common)
        save_scans(path, val, test)
        write_json_atomic(key_path, marker)
        cached = (val, test)
    regime, arm, seed = key
    return RunDetections(
        regime=regime,
        arm=arm,
        seed=seed,
        validation=cached[0],
        test=cached[1],
        train_steps=stage.train_steps,
        train_time_s=stage.train_time_s,
        train_peak_rss_mb=stage.train_peak_rss_mb,
    )


def _cohort(cfg: BenchmarkConfig, out: Path, on_event: Callable[[str], None]) -> Path:
    """The benchmark's cohort under ``out``, generated once.

    Processes started side by side on one output folder (disjoint ``--models``)
    take an exclusive lock on ``<out>/.cohort.lock`` first, so one generates and
    the others wait, then reuse it.
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".cohort.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _cohort_locked(cfg, out, on_event)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cohort_locked(cfg: BenchmarkConfig, out: Path, on_event: Callable[[str], None]) -> Path:
    data_dir = out / "cohort"
    fp = config_fingerprint(cfg.cohort)
    marker = data_dir / COHORT_MARKER
    if marker.is_file():
        found = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        if found == fp:
            on_event(f"cohort: reusing {data_dir}")
            return data_dir
        raise ConfigError(
            f"{data_dir}: holds a cohort generated with other [cohort] settings "
            f"(fingerprint {found}, config {fp}); use a fresh --out folder"
        )
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ConfigError(
            f"{data_dir}: exists but is not a finished benchmark cohort; remove it or use a "
            "fresh --out folder"
        )
    on_event(f"cohort: generating {cfg.cohort.n_patients} patients at {cfg.cohort.shape}^3")
    t0 = time.perf_counter()
    generate_cohort(cfg.cohort, data_dir)
    write_json_atomic(marker, {"fingerprint": fp, "seconds": time.perf_counter() - t0})
    return data_dir


def run_benchmark(
    cfg: BenchmarkConfig,
    out_dir: str | Path,
    *,
    models: Sequence[str] = (),
    on_event: Callable[[str], None] | None = None,
    config_path: str | Path | None = None,
) -> BenchmarkResult:
    """Generate the cohort, train and predict every model, evaluate, track, write the leaderboard.

    Args:
        cfg: The benchmark settings (see :mod:`metstrack.benchmark.config`).
        out_dir: Output folder (created; see the module docstring for its layout).
        models: Row names to run (all when empty); unknown names raise ConfigError.
        on_event: Called with a short line at each stage (CLI progress).
        config_path: The TOML file the config came from (recorded in ``config.json``).

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        ConfigError: Unknown model name, or an output folder holding another cohort.
        MetstrackError: A model's run failed (names its log file).
    """
    emit = on_event or (lambda msg: log.info("%s", msg))
    entries = select_models(cfg, models)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    if cfg.budget.threads > 0:  # the models run with the budget's threads, not torch's default
        machine = replace(machine, torch_threads=cfg.budget.threads)
    fingerprint = config_fingerprint(cfg)
    save_config(
        cfg,
        out / "config.json",
        fingerprint=fingerprint,
        config_path=str(config_path) if config_path else None,
        models=[e.name for e in entries],
        machine=to_dict(machine),
    )
    data_dir = _cohort(cfg, out, emit)
    cohort = read_release(data_dir)
    test_ids = [p.patient_id for p in cohort.split("test")]
    if not test_ids:
        raise DatasetError(f"{data_dir}: the cohort has no test patient; raise cohort.n_patients")

    val_ids = [p.patient_id for p in cohort.split("val")] if cfg.froc.enabled else []
    seeds = run_seeds(cfg)
    single = cfg.regimes == ("all",) and len(seeds) == 1
    runs = [(regime, entry, seed) for regime in cfg.regimes for entry in entries for seed in seeds]
    new_lesions = new_lesion_flags(data_dir) if cfg.froc.enabled else {}
    rows, detections = [], []
    for k, (regime, entry, seed) in enumerate(runs, 1):
        label = entry.name if single else f"{entry.name} [{regime}, seed {seed}]"
        model_dir = out / "models" / (entry.name if single else f"{regime}/{entry.name}/seed{seed}")
        fp = model_fingerprint(cfg, entry, seed=seed, regime=regime)
        stage_path = model_dir / STAGE_FILE
        stage = None
        if stage_path.is_file():
            old = read_stage(model_dir)
            if old.fingerprint == fp:
                stage = old
                emit(f"[{k}/{len(runs)}] {label}: reusing the finished run")
        if stage is None:
            emit(
                f"[{k}/{len(runs)}] {label}: training ({cfg.budget.train_minutes:g} min"
                + (f", {cfg.budget.max_steps} steps" if cfg.budget.max_steps > 0 else "")
                + f") and predicting {len(test_ids)} test"
                + (f" and {len(val_ids)} validation" if val_ids else "")
                + " patients"
            )
            train_cfg = model_train_config(cfg, entry, seed=seed, regime=regime)
            if not train_cfg.data.cache_dir:  # one study cache for every run (content-keyed)
                train_cfg = replace(
                    train_cfg, data=replace(train_cfg.data, cache_dir=str(out / "cache"))
                )
            args = (
                train_cfg,
                data_dir,
                model_dir,
                tuple(test_ids),
                cfg.predict,
                fp,
                cfg.budget.threads,
                tuple(val_ids),
            )
            if cfg.budget.isolate:
                stage = run_isolated(args, model_dir, entry.name)
            else:
                stage = train_and_predict(
                    *args[:5], fingerprint=fp, threads=cfg.budget.threads, extra_patients=args[7]
                )
        row_key = {
            "stage": stage.fingerprint,
            "evaluation": config_fingerprint(cfg.evaluation),
            "tracking": config_fingerprint(cfg.tracking),
            "test_patients": list(test_ids),
            "metstrack_version": __version__,
        }
        row = _cached_row(model_dir, row_key)
        if row is None:
            emit(f"[{k}/{len(runs)}] {label}: evaluating and tracking")
            pred_root = model_dir / "pred"
            evaluation = evaluate_model(
                cfg, data_dir, pred_root, test_ids, model_dir / "evaluation"
            )
            tracking = track_model(cfg, cohort, pred_root, test_ids)
            write_json_atomic(model_dir / "tracking.json", tracking.as_dict())
            row = leaderboard_row(entry, stage, evaluation, tracking, cfg, len(test_ids))
            write_json_atomic(model_dir / ROW_FILE, {"key": row_key, "row": row})
        else:
            emit(f"[{k}/{len(runs)}] {label}: reusing its evaluation ({ROW_FILE})")
        rows.append({**row, "model": label, "regime": regime, "seed": seed})
        if cfg.froc.enabled:
            detections.append(
                _run_detections(cfg, cohort, data_dir, model_dir, stage, (regime, entry.name, seed),
                                test_ids, val_ids, new_lesions)
            )  # fmt: skip

    provenance = {
        **to_dict(machine),
        "config_fingerprint": fingerprint,
        "metstrack_version": __version__,
    }
    frame = leaderboard_frame(
        rows, volume_bins_mm3=cfg.evaluation.volume_bins_mm3, provenance=provenance
    )
    paths = write_leaderboard(frame, out, volume_bins_mm3=cfg.evaluation.volume_bins_mm3)
    emit(f"leaderboard: {paths['md']}")
    if detections:
        froc_paths = write_froc(detections, out, cfg.froc)
        paths = {**paths, **{f"froc_{k}": v for k, v in froc_paths.items()}}
        emit(f"FROC comparison: {froc_paths['md']}")
    return BenchmarkResult(out_dir=out, leaderboard=frame, paths=paths)


__all__ = [
    "BenchmarkResult",
    "StageResult",
    "evaluate_model",
    "leaderboard_row",
    "model_fingerprint",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_benchmark",
    "track_model",
    "train_and_predict",
]
