"""One model of the benchmark: trained and predicted in its own process, its peak memory measured.

:func:`train_and_predict` is what the child process runs (:func:`_worker`);
the parent starts it with :func:`run_isolated` and reads its
:class:`StageResult` back from ``stage.json``. A model folder whose fingerprint
(:func:`model_fingerprint`) matches is reused, so a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import resource
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metstrack.benchmark.config import (
    BenchmarkConfig,
    ModelEntry,
    PredictSettings,
    model_train_config,
)
from metstrack.config import config_fingerprint, to_dict
from metstrack.core.atomic import write_json_atomic
from metstrack.errors import MetstrackError
from metstrack.infer.predict import PredictOptions, load_patient_studies, predict_patient
from metstrack.io.checkpoint import load_checkpoint
from metstrack.io.release import read_release
from metstrack.train.api import train
from metstrack.train.config import TrainConfig

#: Per-model stage record.
STAGE_FILE = "stage.json"
#: Written when a model's training finished, before its predictions: a run stopped
#: while predicting resumes at prediction (same fingerprint, best checkpoint present).
TRAIN_STAGE_FILE = "train_stage.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """What training and inference of one model cost (``stage.json``).

    Attributes:
        fingerprint: Hash of everything that decides the model's outputs.
        train_steps: Optimizer steps reached.
        train_stopped_by: ``"time_budget"``, ``"max_steps"``...
        train_time_s: Wall-clock seconds of the training call.
        best_ckpt: The checkpoint used for inference (best validation score).
        infer_time_s: Wall-clock seconds predicting every test study.
        n_studies: Test studies predicted.
        parameters: Trainable parameters.
        train_peak_rss_mb: Peak resident memory while training (MiB).
        infer_peak_rss_mb: Peak resident memory while predicting (MiB).
        peak_method: ``"vmhwm"`` (per-stage reset) or ``"ru_maxrss"`` (monotone).
    """

    fingerprint: str
    train_steps: int
    train_stopped_by: str
    train_time_s: float
    best_ckpt: str
    infer_time_s: float
    n_studies: int
    parameters: int
    train_peak_rss_mb: float
    infer_peak_rss_mb: float
    peak_method: str


def reset_peak_rss() -> bool:
    """Reset this process's peak resident-set counter; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``, else ``ru_maxrss``)."""
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        m = None
    if m:
        return int(m.group(1)) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def model_fingerprint(
    cfg: BenchmarkConfig, entry: ModelEntry, *, seed: int | None = None, regime: str = "all"
) -> str:
    """Hash of the run's training config (seed and regime included), the budget, inference
    settings and the cohort."""
    return config_fingerprint(
        {
            "train": to_dict(model_train_config(cfg, entry, seed=seed, regime=regime)),
            "budget": to_dict(cfg.budget),
            "predict": to_dict(cfg.predict),
            "cohort": to_dict(cfg.cohort),
        }
    )


def finished_training(model_dir: Path, fingerprint: str) -> dict[str, object] | None:
    """The training record of ``model_dir`` when its training finished with ``fingerprint``.

    Returns:
        The :data:`TRAIN_STAGE_FILE` record, or None when there is none, it belongs to
        other settings, or its best checkpoint is gone.
    """
    path = model_dir / TRAIN_STAGE_FILE
    if not path.is_file():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    if rec.get("fingerprint") != fingerprint or not Path(str(rec.get("best_ckpt"))).is_file():
        return None
    return rec


def train_and_predict(
    train_cfg: TrainConfig,
    data_dir: Path,
    model_dir: Path,
    test_patients: Sequence[str],
    predict: PredictSettings,
    *,
    fingerprint: str,
    threads: int = 0,
    extra_patients: Sequence[str] = (),
) -> StageResult:
    """Train one model, predict the test patients, and record cost (``stage.json``).

    A model whose training already finished with the same ``fingerprint``
    (:func:`finished_training`) is not trained again: a run stopped while
    predicting resumes at its predictions, with the recorded training figures.

    Args:
        train_cfg: The model's full training config (budget applied).
        data_dir: The benchmark cohort (release layout).
        model_dir: ``<out>/models/<name>`` (``run/`` and ``pred/`` are written there).
        test_patients: PatientIDs to predict.
        predict: Inference settings.
        fingerprint: Stored in ``stage.json`` for resuming.
        threads: torch CPU threads for inference (0: leave as is).
        extra_patients: Also predicted after the timed test patients (the
            validation patients, for picking the FROC operating point).

    Returns:
        The :class:`StageResult` (also written to ``model_dir/stage.json``).
    """
    import torch

    model_dir.mkdir(parents=True, exist_ok=True)
    cohort = read_release(data_dir)
    trained = finished_training(model_dir, fingerprint)
    if trained is None:
        method = "vmhwm" if reset_peak_rss() else "ru_maxrss"
        t0 = time.perf_counter()
        result = train(train_cfg, data_dir, model_dir / "run", cohort=cohort)
        trained = {
            "fingerprint": fingerprint,
            "train_steps": int(result.global_step),
            "train_stopped_by": result.stopped_by,
            "train_time_s": round(time.perf_counter() - t0, 3),
            "best_ckpt": str(result.best_ckpt),
            "train_peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_method": method,
        }
        write_json_atomic(model_dir / TRAIN_STAGE_FILE, trained)
    else:
        log.info("%s: reusing the finished training (%s)", model_dir, TRAIN_STAGE_FILE)

    if threads > 0:
        torch.set_num_threads(threads)
    reset_peak_rss()
    model, mcfg = load_checkpoint(trained["best_ckpt"], map_location="cpu")
    n_params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    options = PredictOptions(
        overlap=predict.overlap,
        threshold=predict.threshold,
        sw_batch_size=predict.sw_batch_size,
        tta_flips=predict.tta_flips,
        precision=predict.precision,  # type: ignore[arg-type]  # checked by the config
        memory_format=predict.memory_format,  # type: ignore[arg-type]
        skip_existing=False,
    )
    pred_root = model_dir / "pred"
    n_studies = 0
    t1 = time.perf_counter()
    for pid in test_patients:
        patient = cohort.patient(pid)
        studies = load_patient_studies(patient, tuple(mcfg.modalities))
        predict_patient(model, pid, studies, pred_root, options=options)
        n_studies += len(studies)
    infer_s = time.perf_counter() - t1
    for pid in extra_patients:
        studies = load_patient_studies(cohort.patient(pid), tuple(mcfg.modalities))
        predict_patient(model, pid, studies, pred_root, options=options)
    stage = StageResult(
        fingerprint=fingerprint,
        train_steps=int(trained["train_steps"]),
        train_stopped_by=str(trained["train_stopped_by"]),
        train_time_s=float(trained["train_time_s"]),
        best_ckpt=str(trained["best_ckpt"]),
        infer_time_s=round(infer_s, 3),
        n_studies=n_studies,
        parameters=n_params,
        train_peak_rss_mb=float(trained["train_peak_rss_mb"]),
        infer_peak_rss_mb=round(peak_rss_mb(), 1),
        peak_method=str(trained["peak_method"]),
    )
    write_json_atomic(model_dir / STAGE_FILE, to_dict(stage))
    return stage


def _worker(args: tuple) -> None:  # pragma: no cover - runs in a spawned subprocess
    train_cfg, data_dir, model_dir, test_patients, predict, fingerprint, threads, extra = args
    _die_with_parent()
    model_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(model_dir / "worker.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    import lightning.pytorch  # noqa: F401 - it sets its loggers' levels on import

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        train_and_predict(
            train_cfg,
            data_dir,
            model_dir,
            test_patients,
            predict,
            fingerprint=fingerprint,
            threads=threads,
            extra_patients=extra,
        )
    except BaseException:
        root.error("model run failed:\n%s", traceback.format_exc())
        raise


def _die_with_parent() -> None:  # pragma: no cover - runs in a spawned subprocess
    """Ask Linux to kill this process when its parent dies (no orphaned training run)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_isolated(args: tuple, model_dir: Path, name: str) -> StageResult:
    """Run :func:`_worker` in a spawned process; its result, or an error naming its log."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_worker, args=(args,), name=f"metstrack-bench-{name}")
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise MetstrackError(
            f"model {name}: its subprocess failed (exit code {proc.exitcode}); "
            f"see {model_dir / 'worker.log'}"
        )
    return read_stage(model_dir)


def read_stage(model_dir: Path) -> StageResult:
    """The :class:`StageResult` a model's process wrote to ``stage.json``."""
    data = json.loads((model_dir / STAGE_FILE).read_text(encoding="utf-8"))
    return StageResult(**data)
