"""Hyperparameter search: pruning, the best-score objective, resume after a kill, best.toml trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from metstrack.errors import ConfigError
from metstrack.synth.config import SynthConfig
from metstrack.train.config import load_train_config
from metstrack.train.search import search
from metstrack.train.search_space import apply_params, load_search_config, scaled_augment, to_toml
from metstrack.workflows.synth import generate_cohort

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "search" / "tiny.toml"
S = optuna.trial.TrialState


@pytest.fixture(scope="module")
def synth_cohort(tmp_path_factory) -> Path:
    cfg = SynthConfig(
        n_patients=4,
        shape=32,
        seed=0,
        max_studies=3,
        motion_max_deg=0,
        motion_max_mm=0,
        acquisition="fixed",
        labelled="0.3",
        split_fractions=(0.5, 0.25, 0.25),
    )
    return generate_cohort(cfg, tmp_path_factory.mktemp("search_cohort"))


def _study(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'search.db'}")


def test_two_trials_one_pruned_and_best_config_trains(synth_cohort, tmp_path, cli):
    out = tmp_path / "search"
    result = search(TINY, synth_cohort, out, n_trials=2)
    states = sorted(t.state.name for t in _study(out).trials)
    assert states == ["COMPLETE", "PRUNED"]
    assert (result.n_complete, result.n_pruned) == (1, 1)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2
    # the objective is the best validation score of the run, not the last one
    best_trial = next(t for t in _study(out).trials if t.state == S.COMPLETE)
    history = pd.read_csv(Path(best_trial.user_attrs["run_dir"]) / "validation.csv")
    assert best_trial.value == pytest.approx(history["score"].max())
    # the pruned trial stopped at its first validation pass
    pruned = next(t for t in _study(out).trials if t.state == S.PRUNED)
    assert pruned.last_step == 3
    # best.toml is the best trial's resolved config and trains as written
    cfg = load_train_config(out / "best.toml")
    assert cfg.optim.lr == pytest.approx(result.best_params["optim.lr"])
    assert cfg == apply_params(load_search_config(TINY)[0], result.best_params)
    res = cli(
        "train",
        "--config",
        out / "best.toml",
        "--data",
        synth_cohort,
        "--out",
        tmp_path / "repro",
        "--max-steps",
        "1",
    )
    assert res.exit_code == 0, res.output
    # rerunning with the same study and storage finds the work done
    again = search(TINY, synth_cohort, out, n_trials=2)
    assert len(_study(out).trials) == 2 and again.best_value == result.best_value


def _raw_state(out):
    """(finished trials, id of a running trial with params and a heartbeat) or None."""
    import sqlite3

    con = sqlite3.connect(out / "search.db", timeout=5)
    try:
        states = con.execute("SELECT trial_id, state FROM trials").fetchall()
        n_done = sum(st in ("COMPLETE", "PRUNED") for _, st in states)
        for tid, st in states:
            if st != "RUNNING":
                continue
            has_params = con.execute(
                "SELECT COUNT(*) FROM trial_params WHERE trial_id = ?", (tid,)
            ).fetchone()[0]
            # a trial killed before its first heartbeat is never seen as stale
            has_beat = con.execute(
                "SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = ?", (tid,)
            ).fetchone()[0]
            if has_params and has_beat:
                return n_done, tid
        return n_done, None
    except sqlite3.Error:  # schema not created yet, or busy
        return None
    finally:
        con.close()


def test_killed_search_resumes_where_it_stopped(synth_cohort, tmp_path, cli):
    out = tmp_path / "search"
    # no pruning here, so the second trial lives long enough to be killed mid-run
    config = tmp_path / "search.toml"
    config.write_text(TINY.read_text().replace('pruner = "median"', 'pruner = "none"'))
    cmd = [
        sys.executable,
        "-m",
        "metstrack.cli.main",
        "search",
        "--config",
        str(config),
        "--data",
        str(synth_cohort),
        "--out",
        str(out),
        "--trials",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log_path = tmp_path / "search.log"
    killed_id = None
    deadline = time.time() + 240
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.3)
                if not (out / "search.db").exists():
                    continue
                # poll with plain SQL: opening the study through optuna here could race the
                # search process creating the schema (both insert alembic_version)
                state = _raw_state(out)
                if state is None:
                    continue
                n_done, running_id = state
                if n_done and running_id is not None:
                    killed_id = running_id
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert killed_id is not None, log_path.read_text()[-2000:]
    # the search process is dead: opening the study through optuna is safe now
    killed_params = next(t.params for t in _study(out).trials if t._trial_id == killed_id)
    assert [t.state for t in _study(out).trials].count(S.RUNNING) == 1
    time.sleep(3.5)  # longer than the grace period (2 s): the dead trial's heartbeat is stale
    res = cli("search", "--config", config, "--data", synth_cohort, "--out", out, "--trials", "2")
    assert res.exit_code == 0, res.output
    trials = _study(out).trials
    states = [t.state for t in trials]
    assert states.count(S.COMPLETE) + states.count(S.PRUNED) == 2
    assert states.count(S.FAIL) == 1 and S.RUNNING not in states
    # the killed trial was re-run with the same parameters
    rerun = trials[-1]
    assert rerun.state in (S.COMPLETE, S.PRUNED)
    assert rerun.params == pytest.approx(killed_params)
    assert json.loads((out / "search.json").read_text())["n_trials"] == 3
    assert (out / "best.toml").is_file()


def test_search_space_and_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[search]\n[search.space."optim.lrr"]\ntype = "float"\nlow = 1\nhigh = 2\n')
    with pytest.raises(ConfigError, match="lr"):
        load_search_config(bad)
    bad.write_text('[search]\n[search.space."optim.lr"]\ntype = "flot"\nlow = 1\nhigh = 2\n')
    with pytest.raises(ConfigError, match="float"):
        load_search_config(bad)
    bad.write_text(
        '[search]\npruner = "medain"\n[search.space."optim.lr"]\ntype="float"\nlow=1\nhigh=2\n'
    )
    with pytest.raises(ConfigError, match="median"):
        load_search_config(bad)
    bad.write_text("[model]\nwidth = 0.5\n")
    with pytest.raises(ConfigError, match=r"\[search\]"):
        load_search_config(bad)


def test_augment_strength_scales_and_disables():
    base = {
        "flip_prob": 0.5,
        "affine_prob": 0.3,
        "intensity_prob": 0.5,
        "rotate_max_deg": 10.0,
        "scale_max": 0.1,
        "intensity_scale": 0.1,
        "intensity_shift": 0.1,
        "enabled": True,
    }
    assert scaled_augment(base, 0.0)["enabled"] is False
    strong = scaled_augment(base, 3.0)
    assert strong["flip_prob"] == 1.0 and strong["rotate_max_deg"] == 30.0
    assert strong["scale_max"] == pytest.approx(0.3)


def test_toml_writer_round_trips_a_training_config(tmp_path):
    import tomllib

    cfg = apply_params(load_search_config(TINY)[0], {"loss.name": "tversky", "optim.lr": 1.5e-4})
    text = to_toml({"a": {"b": [1, 2], "c": 'x"y', "d": True, "e": 1e-5}})
    assert tomllib.loads(text) == {"a": {"b": [1, 2], "c": 'x"y', "d": True, "e": 1e-5}}
    from metstrack.train.search_space import write_train_toml

    path = write_train_toml(cfg, tmp_path / "c.toml", header="hello")
    assert load_train_config(path) == cfg


def test_every_point_of_the_shipped_space_is_a_valid_training_config():
    from metstrack.train.search import _suggest
    from metstrack.train.search_space import param_specs

    base, scfg, _ = load_search_config(REPO / "configs" / "search" / "stt.toml")
    specs = param_specs(scfg)
    assert {s.key for s in specs} == {
        "optim.lr",
        "loss.name",
        "augment.strength",
        "model.width",
        "data.lesion_fraction",
        "data.max_studies",
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = {s.key: _suggest(trial, s) for s in specs}
        cfg = apply_params(base, params)
        assert cfg.optim.lr == params["optim.lr"] and 1e-4 <= cfg.optim.lr <= 1e-2
        assert cfg.data.max_studies == params["data.max_studies"]
        assert cfg.model.width in (0.125, 0.25, 0.5)
        study.tell(trial, 0.0)
    lrs = [t.params["optim.lr"] for t in study.trials]
    # log scale: about as many draws below 1e-3 as above
    assert 5 <= sum(lr < 1e-3 for lr in lrs) <= 15
