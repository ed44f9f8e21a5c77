"""``--executor dask`` on a real two-worker LocalCluster on localhost (no mocks).

One cluster serves the module: preprocess, predict, evaluate and track on it give
byte-identical outputs to the local executor; each worker loads the model once;
a worker killed with SIGKILL mid-run loses and duplicates nothing; an
unreachable scheduler is one line and exit code 1, before any work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from metstrack.catalog import Catalog
from metstrack.config import load_config
from metstrack.errors import ConfigError
from metstrack.execution.executor import (
    MEMORY_RESOURCE,
    DaskExecutor,
    LocalExecutor,
    WorkerLostError,
)
from metstrack.infer.run import PredictRequest, model_loads, predict_dataset
from metstrack.io.checkpoint import save_checkpoint
from metstrack.io.tracks import MaskSource
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.preprocess.config import PreprocessConfig
from metstrack.preprocess.pipeline import preprocess_dataset
from metstrack.synth.config import SynthConfig
from metstrack.workflows.evaluate import EvaluationConfig, evaluate_predictions
from metstrack.workflows.synth import generate_cohort
from metstrack.workflows.track import track_dataset

#: Small pyramids and a coarse grid keep preprocessing fast on two shared cores.
FAST = [
    "spacing_mm=2.5",
    "brain_method=heuristic",
    "brain.working_spacing_mm=2.5",
    "through_time.shrink_factors=[2,1]",
    "through_time.smoothing_sigmas_mm=[2.0,0.0]",
    "through_time.sampling_percentage=0.25",
    "within_study.shrink_factors=[2,1]",
    "within_study.smoothing_sigmas_mm=[2.0,0.0]",
    "within_study.iterations=40",
]
#: Files that record timings or the run's own paths, not results.
RUN_RECORDS = {"config.json", "report.json", "predict_config.json", "track_config.json"}


def _cfg() -> PreprocessConfig:
    return load_config(PreprocessConfig, None, FAST)


def _files(root: Path) -> dict[str, bytes]:
    """Every result file under ``root`` by relative path (run records and provenance left out)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in RUN_RECORDS and "provenance" not in p.parts
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    cfg = SynthConfig(
        n_patients=3,
        seed=3,
        shape=32,
        min_studies=2,
        max_studies=2,
        vessel_bait=False,
        anatomy="phantom",
    )
    return generate_cohort(cfg, tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", build_model(cfg), cfg)


@pytest.fixture(scope="module")
def local_run(cohort, checkpoint, tmp_path_factory) -> Path:
    """preprocess -> predict -> evaluate -> track with the local executor."""
    root = tmp_path_factory.mktemp("local")
    preprocess_dataset(cohort, root / "pre", _cfg(), workers=1)
    predict_dataset(PredictRequest(checkpoint, root / "pre", root / "pred"))
    evaluate_predictions(
        root / "pred", cohort, root / "eval", EvaluationConfig(n_bootstrap=20), workers=1
    )
    track_dataset(cohort, root / "track", MaskSource("ground-truth", cohort), figures=False)
    return root


@pytest.fixture(scope="module")
def cluster():
    """Two workers, started while Dask's default dashboard port is taken (as by another
    cluster on the machine): no warning (the suite turns warnings into errors)."""
    with socket.socket() as busy:
        with contextlib.suppress(OSError):  # already taken: the same situation
            busy.bind(("", 8787))
            busy.listen()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            executor = DaskExecutor(workers=2)
            executor.open()
    try:
        yield executor
    finally:
        executor.close()


def test_two_worker_cluster_is_byte_identical_to_the_local_executor(
    cohort, checkpoint, local_run, cluster, tmp_path
) -> None:
    pre = preprocess_dataset(cohort, tmp_path / "pre", _cfg(), executor=cluster)
    assert (pre.count("done"), pre.count("failed")) == (6, 0)
    pred = predict_dataset(
        PredictRequest(checkpoint, tmp_path / "pre", tmp_path / "pred"), executor=cluster
    )
    assert [p.patient_id for p in pred.patients] == ["P00001", "P00002", "P00003"]
    assert pred.failed == []
    evaluate_predictions(
        tmp_path / "pred",
        cohort,
        tmp_path / "eval",
        EvaluationConfig(n_bootstrap=20),
        executor=cluster,
    )
    track_dataset(
        cohort,
        tmp_path / "track",
        MaskSource("ground-truth", cohort),
        figures=False,
        executor=cluster,
    )
    for step in ("pre", "pred", "eval", "track"):
        want, got = _files(local_run / step), _files(tmp_path / step)
        assert sorted(got) == sorted(want), step
        different = [name for name in want if want[name] != got[name]]
        assert different == [], f"{step}: {different}"
    assert any(name.endswith("mask.nii.gz") for name in _files(tmp_path / "pred"))
    # 3 patients on 2 workers: each worker loaded the checkpoint at most once.
    loads = cluster.client.run(model_loads)
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    cohort, local_run, cluster, tmp_path
) -> None:
    pids = cluster.worker_pids()
    out, db = tmp_path / "pre", tmp_path / "catalog.db"
    result: dict[str, object] = {}

    def run() -> None:
        result["report"] = preprocess_dataset(
            cohort, out, _cfg(), executor=cluster, catalog_path=db
        )

    worker = threading.Thread(target=run)
    worker.start()
    killed = killed_address = None
    deadline = time.monotonic() + 60
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        busy = [addr for addr, keys in cluster.client.processing().items() if keys]
        if busy and busy[0] in pids:
            killed, killed_address = pids[busy[0]], busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    worker.join(timeout=120)
    assert killed is not None, "no worker was busy: nothing was killed"
    report = result["report"]
    keys = [(o.patient_id, o.study_id) for o in report.outcomes]
    assert len(keys) == len(set(keys)) == 6 and not report.failed
    assert sorted(_files(out)) == sorted(_files(local_run / "pre"))
    for name, data in _files(local_run / "pre").items():
        assert (out / name).read_bytes() == data, name
    with Catalog.open(db) as catalog:
        rows = catalog.frame("run_studies")
    assert len(rows) == 6 and set(rows["status"]) <= {"done", "skipped"}
    assert killed not in cluster.worker_pids().values()
    # The scheduler saw the worker die holding a patient, and ran that patient again.
    removed = [
        msg
        for _, msg in cluster.client.get_events(killed_address)
        if isinstance(msg, dict) and msg.get("action") == "remove-worker"
    ]
    assert removed and removed[-1]["processing-tasks"], removed


def test_unreachable_scheduler_is_one_line_and_exit_1_before_any_work(
    cli, cohort, tmp_path
) -> None:
    out = tmp_path / "eval"
    t0 = time.monotonic()
    res = cli(
        "evaluate",
        "--pred",
        tmp_path,
        "--ref",
        cohort,
        "--out",
        out,
        "--executor",
        "dask",
        "--scheduler",
        "tcp://127.0.0.1:9",
    )
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "tcp://127.0.0.1:9 cannot be reached" in lines[0], res.output
    assert not out.exists() and time.monotonic() - t0 < 30


def test_executor_options_are_checked_as_usage_errors(cli, cohort, tmp_path) -> None:
    for args, message in (
        (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler needs --executor dask"),
        (["--executor", "daks"], "did you mean 'dask'"),
        (["--task-memory", "4"], "--task-memory needs --executor dask"),
    ):
        res = cli("track", "--data", cohort, "--out", tmp_path / "t", "--labels", *args)
        assert res.exit_code == 2 and message in res.output, res.output


def test_a_running_scheduler_is_used_and_a_task_memory_no_worker_offers_is_refused(
    cli, cohort, local_run, cluster, tmp_path
) -> None:
    address = cluster.client.scheduler.address
    res = cli(
        "track", "--data", cohort, "--out", tmp_path / "t", "--ground-truth", "--no-figures",
        "--executor", "dask", "--scheduler", address,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _files(tmp_path / "t") == _files(local_run / "track")
    workers = cluster.client.scheduler_info()["workers"].values()
    offered = [w["resources"][MEMORY_RESOURCE] for w in workers]
    with pytest.raises(ConfigError, match="no Dask worker offers that much"):
        DaskExecutor(address, task_memory_gib=4 * max(offered)).open()
    res = cli(
        "track", "--data", cohort, "--out", tmp_path / "t2", "--ground-truth",
        "--executor", "dask", "--scheduler", address, "--task-memory", str(4 * max(offered)),
    )  # fmt: skip
    assert res.exit_code == 1 and "no Dask worker offers that much" in res.output
    assert not (tmp_path / "t2").exists()


def test_task_memory_hint_runs_on_workers_that_offer_it(cluster) -> None:
    cluster.task_memory_gib = 0.25
    try:
        got = dict(cluster.map_unordered(abs, [-1, -2, -3]))
    finally:
        cluster.task_memory_gib = None
    assert got == {0: 1, 1: 2, 2: 3}


def test_local_executor_yields_every_result_and_raises_the_first_error() -> None:
    assert sorted(LocalExecutor(2).map_unordered(abs, [-1, -2, -3])) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(TypeError):
        list(LocalExecutor(1).map_unordered(abs, ["x"]))


def test_a_unit_that_kills_its_workers_is_one_error_naming_it(cluster) -> None:
    scheduler = (
        cluster._cluster.scheduler
    )  # in this process: allow no retry, so one death is enough
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0
    try:
        with pytest.raises(WorkerLostError, match=r"^7: every worker that ran it died"):
            list(cluster.map_unordered(os._exit, [7]))
    finally:
        scheduler.allowed_failures = allowed
