"""The benchmark: the tiny config gives a complete leaderboard; CLI exit codes; config rules.

The docs' worked example (``docs/benchmark.md``, the tiny config) is run once,
exactly as written, by the module fixture; the other tests read its outputs.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from metstrack.benchmark.config import (
    load_benchmark_config,
    model_train_config,
    select_models,
)
from metstrack.benchmark.leaderboard import PROVENANCE, columns, strata
from metstrack.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmark.md"
TINY = REPO / "configs" / "benchmark_tiny.toml"
FULL = REPO / "configs" / "benchmark.toml"

#: Metric columns that must be finite whenever the test set defines them.
_ALWAYS_FINITE = (
    "fp_per_scan",
    "lesion_f1",
    "lesion_sensitivity",
    "lesionwise_dice",
    "train_time_s",
    "infer_time_per_study_s",
    "train_peak_rss_mb",
    "infer_peak_rss_mb",
)


def _worked_example() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Worked example", 1)[1]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    lines = [ln[2:] for ln in block.splitlines() if ln.startswith("$ metstrack ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run the docs' worked example (the tiny config) once, from a scratch folder."""
    from typer.testing import CliRunner

    from metstrack.cli.main import app

    work = tmp_path_factory.mktemp("bench")
    args = _worked_example()
    assert args[:2] == ["metstrack", "benchmark"]
    args = [str(REPO / a) if a.startswith("configs/") else a for a in args[1:]]
    out_i = args.index("--out") + 1
    args[out_i] = str(work / args[out_i])
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    return res, Path(args[out_i])


def test_worked_example_writes_a_complete_leaderboard(tiny_run):
    res, out = tiny_run
    assert res.exit_code == 0, res.output
    cfg = load_benchmark_config(TINY)
    frame = pd.read_csv(out / "leaderboard.csv")
    assert list(frame.columns) == columns(cfg.evaluation.volume_bins_mm3)
    assert frame["model"].tolist() == [m.name for m in cfg.models]
    # the < 10 mm3 stratum comes first among the metrics
    assert (
        frame.columns[3] == "sensitivity_lt10_mm3" == strata(cfg.evaluation.volume_bins_mm3)[0][1]
    )
    for _, row in frame.iterrows():
        for col in _ALWAYS_FINITE:
            assert math.isfinite(row[col]), (row["model"], col)
        if row["n_ref_lesions_lt10_mm3"] > 0:
            assert 0.0 <= row["sensitivity_lt10_mm3"] <= 1.0
        assert row["train_steps"] == cfg.budget.max_steps
        assert row["parameters"] > 0 and row["n_test_studies"] > 0
        assert row["train_peak_rss_mb"] > 50  # Python + torch at least
        for col in PROVENANCE:
            assert isinstance(row[col], str) or math.isfinite(row[col]), col
        tracking = json.loads((out / "models" / row["model"] / "tracking.json").read_text())
        if tracking["n_correspondences"]:
            assert math.isfinite(row["tracking_link_accuracy"])
    assert frame.loc[frame["model"] == "stt_prior", "prior_mask"].item()
    # STT carries the ConvLSTM: more parameters than the same backbone without memory
    params = dict(zip(frame["model"], frame["parameters"], strict=True))
    assert params["stt"] > params["unet"]
    # every run reads one shared study cache (a cache per run would be the cohort again)
    assert any((out / "cache").rglob("image.npy"))
    assert not any((out / "models").rglob("image.npy"))


def test_leaderboard_markdown_names_commit_machine_and_every_model(tiny_run):
    _, out = tiny_run
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    frame = pd.read_csv(out / "leaderboard.csv")
    commit = frame["git_commit"].iloc[0]
    assert commit != "unknown" and commit in md
    assert frame["cpu_model"].iloc[0] in md and frame["torch_version"].iloc[0] in md
    for name in frame["model"]:
        assert re.search(rf"^\| {re.escape(name)} \|", md, re.M), name
    assert "sens. [0-10) mm3" in md
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["budget"]["max_steps"] == 2 and saved["machine"]["cpu_cores"] >= 1


def test_every_model_gets_the_same_budget_and_seed():
    cfg = load_benchmark_config(FULL)
    runs = [model_train_config(cfg, m) for m in cfg.models]
    assert {r.model.name for r in runs} == {"stt", "unet", "dynunet", "stt-ms"}
    assert [r.model.prior_mask for r in runs] == [m.prior_mask for m in cfg.models]
    for r in runs:
        assert r.trainer.time_budget_min == cfg.budget.train_minutes > 0
        assert r.trainer.seed == runs[0].trainer.seed
        assert r.trainer.threads == cfg.budget.threads
        assert r.data == runs[0].data and r.optim == runs[0].optim
    assert cfg.cohort.split_fractions[2] > 0 and cfg.cohort.split_fractions[1] > 0
    # issue 17: equal optimiser steps, 3 seeds, both label regimes, >= 24 test patients
    assert cfg.budget.max_steps > 0 and len(cfg.budget.seeds) == 3
    assert cfg.regimes == ("all", "radiosurgery")
    assert round(cfg.cohort.n_patients * cfg.cohort.split_fractions[2]) >= 24


def test_rerun_reuses_finished_models(tiny_run, cli):
    _, out = tiny_run
    res = cli("benchmark", "--config", TINY, "--out", out, "--models", "unet")
    assert res.exit_code == 0, res.output
    assert "reusing the finished run" in res.output
    assert pd.read_csv(out / "leaderboard.csv")["model"].tolist() == ["unet"]
    # its evaluation too (row.json): the tables were not rewritten, the row is the same
    summary = out / "models" / "unet" / "evaluation" / "summary.csv"
    before = summary.stat().st_mtime_ns
    metrics = ["lesion_f1", "fp_per_scan", "sensitivity_lt10_mm3", "tracking_link_accuracy"]
    first = pd.read_csv(out / "leaderboard.csv")[metrics]
    again = cli("benchmark", "--config", TINY, "--out", out, "--models", "unet")
    assert "reusing its evaluation" in again.output and summary.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "leaderboard.csv")[metrics], first)
    # other evaluation settings: evaluated again
    changed = cli(
        "benchmark", "--config", TINY, "--out", out, "--models", "unet",
        "--set", "evaluation.n_bootstrap=50",
    )  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert "evaluating and tracking" in changed.output and summary.stat().st_mtime_ns != before


def test_select_models_keeps_config_order_and_suggests():
    cfg = load_benchmark_config(TINY)
    assert [m.name for m in select_models(cfg, ["dynunet", "stt"])] == ["stt", "dynunet"]
    with pytest.raises(ConfigError, match="did you mean 'stt_prior'"):
        select_models(cfg, ["stt_prio"])


def _write(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(TINY.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return p


def test_unknown_network_in_config_exits_1_with_suggestion(cli, tmp_path):
    cfg = _write(tmp_path, '\n[[models]]\nname = "dyn2"\nnetwork = "dynunett"\n')
    res = cli("benchmark", "--config", cfg, "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "unknown network 'dynunett'" in res.output and "did you mean 'dynunet'" in res.output
    assert not (tmp_path / "o").exists()  # nothing written before the config is valid


def test_unknown_models_option_exits_2_with_suggestion(cli, tmp_path):
    res = cli("benchmark", "--config", TINY, "--out", tmp_path / "o", "--models", "unet,stt_prio")
    assert res.exit_code == 2
    assert "unknown model 'stt_prio'" in res.output and "did you mean 'stt_prior'" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["--set", "budget.train_minutse=1"], "did you mean 'train_minutes'"),
        (["--set", "cohort.motion_max_deg=5"], "without motion"),
        (["--set", "budget.train_minutes=0", "--set", "budget.max_steps=-1"], "no end"),
        (["--set", "cohort.split_fractions=[0.8,0.2,0.0]"], "test patients"),
    ],
)
def test_bad_settings_exit_1(cli, tmp_path, extra_args, message):
    res = cli("benchmark", "--config", TINY, "--out", tmp_path / "o", *extra_args)
    assert res.exit_code == 1
    assert message in res.output


def test_missing_config_file_exits_1(cli, tmp_path):
    res = cli("benchmark", "--config", tmp_path / "nope.toml", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "config file not found" in res.output


def test_duplicate_row_names_rejected(tmp_path):
    cfg = _write(tmp_path, '\n[[models]]\nname = "stt"\nnetwork = "stt"\n')
    with pytest.raises(ConfigError, match="used twice"):
        load_benchmark_config(cfg)


@pytest.mark.slow
def test_isolated_model_runs_in_a_subprocess(tmp_path, cli):
    """``budget.isolate`` trains and predicts in a spawned process; memory comes back with it."""
    out = tmp_path / "iso"
    res = cli(
        "benchmark", "--config", TINY, "--out", out, "--models", "unet",
        "--set", "budget.isolate=true",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stage = json.loads((out / "models" / "unet" / "stage.json").read_text())
    assert stage["train_steps"] == 2 and stage["infer_peak_rss_mb"] > 50
    assert (out / "models" / "unet" / "worker.log").is_file()


def test_run_benchmark_script_copies_the_leaderboard(tiny_run, tmp_path):
    """``benchmarks/run_benchmark.py`` (finished models reused) copies the files to --results."""
    import importlib.util

    _, out = tiny_run
    spec = importlib.util.spec_from_file_location(
        "run_benchmark", REPO / "benchmarks" / "run_benchmark.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = tmp_path / "results"
    assert mod.main(["--config", str(TINY), "--out", str(out), "--results", str(results)]) == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "config.json",
                 "froc.md", "froc.csv", "froc_curves.csv", "froc_all.png"):  # fmt: skip
        assert (results / name).is_file(), name
    assert pd.read_csv(results / "leaderboard.csv")["model"].tolist() == [
        "stt",
        "unet",
        "stt_prior",
        "dynunet",
    ]


def test_report_shows_the_froc_comparison(tiny_run, cli, tmp_path):
    """docs/benchmark.md: `metstrack report --benchmark bench-tiny --out bench-tiny/report`."""
    _, out = tiny_run
    r = cli("report", "--benchmark", out, "--out", tmp_path / "report")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "report" / "index.html").read_text()
    for arm in pd.read_csv(out / "froc.csv")["arm"]:
        assert f"<td>{arm}</td>" in html
    assert (tmp_path / "report" / "img" / "froc_all.png").is_file()
    assert "The same comparison at other FP/scan targets" in html and "<td>4</td>" in html


def test_froc_comparison_is_written_for_every_arm(tiny_run):
    _, out = tiny_run
    cfg = load_benchmark_config(TINY)
    table = pd.read_csv(out / "froc.csv")
    assert table["arm"].tolist() == [m.name for m in cfg.models]
    assert set(table["regime"]) == {"all"}
    grid = set(cfg.froc.thresholds)
    for t in table["thresholds"].astype(str):
        assert {float(x) for x in t.split(",")} <= grid
    for col in ("sensitivity_all", "fp_per_scan", "val_fp_per_scan"):
        vals = table[col].dropna()
        assert len(vals) == len(table) and (vals >= 0).all()
    assert ((table["sensitivity_all"] >= 0) & (table["sensitivity_all"] <= 1)).all()
    # every arm but the reference is compared with it
    ref = table["arm"] == cfg.froc.reference
    assert table.loc[ref, "diff_all"].isna().all() and table.loc[~ref, "diff_all"].notna().all()
    curves = pd.read_csv(out / "froc_curves.csv")
    assert set(curves["stratum"]) == {"all", "lt10_mm3", "new"}
    assert len(curves) == len(table) * 3 * len(cfg.froc.thresholds)
    assert (out / "froc_all.png").stat().st_size > 1000
    md = (out / "froc.md").read_text(encoding="utf-8")
    assert "Regime: all" in md and f"at most {cfg.froc.fp_per_scan_target:g}" in md
    # each run's detections are cached next to it
    assert all((out / "models" / m.name / "froc.json").is_file() for m in cfg.models)
    # the comparison repeated at the other targets: more FP allowed -> a threshold no higher
    # and a sensitivity no lower than at the main target, run by run and arm by arm
    others = pd.read_csv(out / "froc_targets.csv")
    assert set(others["fp_per_scan_target"]) == set(cfg.froc.other_targets) == {4.0}
    assert others["arm"].tolist() == table["arm"].tolist()
    for (_, main), (_, other) in zip(table.iterrows(), others.iterrows(), strict=True):
        t_main = [float(x) for x in str(main["thresholds"]).split(",")]
        t_other = [float(x) for x in str(other["thresholds"]).split(",")]
        assert all(b <= a for a, b in zip(t_main, t_other, strict=True))
        assert other["sensitivity_all"] >= main["sensitivity_all"]
    assert "## Other operating points" in md and "| 4 | " in md


def test_seeds_and_label_regimes_each_train_their_own_run(tmp_path):
    from metstrack.benchmark.runner import run_benchmark

    cfg = load_benchmark_config(TINY, ["budget.seeds=[0, 1]", "regimes=['all', 'radiosurgery']"])
    runs = {
        (r, s): model_train_config(cfg, cfg.models[0], seed=s, regime=r)
        for r in cfg.regimes
        for s in (0, 1)
    }
    assert (
        runs[("all", 0)].data.use_all_labels and not runs[("radiosurgery", 0)].data.use_all_labels
    )
    assert runs[("all", 1)].trainer.seed == 1
    res = run_benchmark(cfg, tmp_path / "b", models=["stt", "unet"])
    frame = res.leaderboard
    assert len(frame) == 8 and set(frame["regime"]) == {"all", "radiosurgery"}
    assert sorted(set(frame["seed"])) == [0, 1]
    for r in cfg.regimes:
        for name in ("stt", "unet"):
            for s in (0, 1):
                assert (tmp_path / "b" / "models" / r / name / f"seed{s}" / "stage.json").is_file()
    table = pd.read_csv(tmp_path / "b" / "froc.csv")
    assert len(table) == 4 and set(table["seeds"].astype(str)) == {"0,1"}
    assert (tmp_path / "b" / "froc_radiosurgery.png").is_file()


def test_unknown_regime_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'radiosurgery'"):
        load_benchmark_config(TINY, ["regimes=['radiosurgry']"])
    with pytest.raises(ConfigError, match="seeds"):
        load_benchmark_config(TINY, ["budget.seeds=[1, 1]"])
    with pytest.raises(ConfigError, match=r"froc.other_targets \[-1.0\]"):
        load_benchmark_config(TINY, ["froc.other_targets=[-1.0]"])
    with pytest.raises(ConfigError, match="froc.min_iou"):
        load_benchmark_config(TINY, ["froc.min_iou=2"])
    with pytest.raises(ConfigError, match="predict.precision 'bf61'.*did you mean 'bf16'"):
        load_benchmark_config(TINY, ["predict.precision='bf61'"])
    with pytest.raises(ConfigError, match="predict.memory_format"):
        load_benchmark_config(TINY, ["predict.memory_format='nchw'"])


def test_the_benchmark_predicts_on_the_reference_path_unless_told():
    """Networks are compared in fp32 as trained, the same on every CPU (docs/speed.md)."""
    cfg = load_benchmark_config(TINY)
    assert (cfg.predict.precision, cfg.predict.memory_format) == ("fp32", "ncdhw")
    fast = load_benchmark_config(TINY, ["predict.precision='auto'"])
    assert fast.predict.precision == "auto"


def test_side_by_side_processes_generate_the_cohort_once(tmp_path, monkeypatch):
    """Two runs started together on one folder: one generates the cohort, the other waits."""
    import threading
    import time

    from metstrack.benchmark import runner

    calls = []

    def slow_generate(cohort_cfg, data_dir):
        calls.append(data_dir)
        time.sleep(0.5)
        data_dir.mkdir(parents=True)
        (data_dir / "imaging").mkdir()

    monkeypatch.setattr(runner, "generate_cohort", slow_generate)
    cfg = load_benchmark_config(TINY)
    found = []
    threads = [
        threading.Thread(target=lambda: found.append(runner._cohort(cfg, tmp_path, lambda m: None)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and found == [tmp_path / "cohort"] * 2


def test_a_run_stopped_while_predicting_resumes_at_its_predictions(tiny_run, cli):
    """train_stage.json: the finished training is reused, the predictions are made again."""
    _, out = tiny_run
    model = out / "models" / "dynunet"
    trained = json.loads((model / "train_stage.json").read_text())
    best = Path(trained["best_ckpt"])
    before = best.stat().st_mtime_ns
    (model / "stage.json").unlink()  # as if killed after training, before stage.json
    mask = next((model / "pred").rglob("mask.nii.gz"))
    mask.unlink()
    res = cli("benchmark", "--config", TINY, "--out", out, "--models", "dynunet")
    assert res.exit_code == 0, res.output
    assert best.stat().st_mtime_ns == before and mask.is_file()
    stage = json.loads((model / "stage.json").read_text())
    assert stage["train_time_s"] == trained["train_time_s"]
    assert stage["train_steps"] == trained["train_steps"]


def test_memory_ablation_switches_off_only_the_memory(tiny_run, tmp_path):
    """benchmarks/memory_ablation.py on the worked example's STT run."""
    import importlib.util

    _, out = tiny_run
    script = REPO / "benchmarks" / "memory_ablation.py"
    spec = importlib.util.spec_from_file_location("memory_ablation", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = mod.find_runs(out, "all", ["stt", "unet"])
    assert [(arm, seed) for arm, seed, _ in runs] == [("stt", 0), ("unet", 0)]
    assert (
        mod.main(["--bench", str(out), "--arms", "stt", "--seeds", "1", "--out", str(tmp_path)])
        == 1
    )
    assert mod.main(["--bench", str(out), "--arms", "stt,unet", "--out", str(tmp_path),
                     "--n-bootstrap", "50", "--seeds", "0"]) == 0  # fmt: skip
    table = pd.read_csv(tmp_path / "memory_ablation.csv").set_index("arm")
    # the first study has no memory to lose: its mask is the same with memory on or off
    assert (table["mask_dice_first_study"] == 1.0).all()
    # the U-Net has no memory: switching it off changes nothing at all
    unet = table.loc["unet"]
    assert unet["mask_dice_later_min"] == 1.0 and unet["diff_all"] == 0.0
    assert unet["sens_all_memory"] == unet["sens_all_no_memory"]
    for col in ("sens_all_memory", "sens_all_no_memory", "fp_per_scan_no_memory"):
        assert table[col].notna().all() and (table[col] >= 0).all()
    assert (out / "models" / "stt" / "pred_nomemory").is_dir()
    assert "| stt |" in (tmp_path / "memory_ablation.md").read_text(encoding="utf-8")
