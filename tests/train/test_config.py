"""Training config: TOML, overrides, checks with suggestions; CLI usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from metstrack.errors import ConfigError
from metstrack.train.config import TrainConfig, load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_load():
    from metstrack.benchmark.config import load_benchmark_config

    demo = Path(__file__).resolve().parents[2] / "src" / "metstrack" / "data" / "stt_demo.toml"
    paths = [*sorted(CONFIGS.glob("*.toml")), demo]
    assert len(paths) >= 4
    for path in paths:
        if path.name.startswith("benchmark"):  # benchmark configs have their own schema
            load_benchmark_config(path)
            continue
        cfg = load_train_config(path)
        assert isinstance(cfg, TrainConfig)
    small = load_train_config(CONFIGS / "stt_cpu_small.toml", ["optim.lr=3e-4"])
    assert small.optim.lr == 3e-4 and small.model.width == 0.25


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", r"unknown key 'lrr'.*did you mean 'lr'"),
        ("optimizer.lr=1e-3", r"unknown key 'optimizer'.*did you mean 'optim'"),
        ("loss.name=dicefocall", r"did you mean 'dicefocal'"),
        ("validation.score=lesion_f2", r"did you mean 'lesion_f1'"),
        ("model.roi_size=[40,48,48]", r"multiples of 16"),
        ("optim.schedule=cosin", r"did you mean 'cosine'"),
        ("data.lesion_fraction=1.5", r"must lie in \[0, 1\]"),
        ("data.max_studies=0", r"at least 1"),
        ("augment.rotate_max_deg=90", r"small rotations"),
        ("data.missing_modality=zeros", r"valid: error, zero"),
    ],
)
def test_bad_settings_name_the_key_and_suggest(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, [override])


def test_run_without_end_is_refused():
    with pytest.raises(ConfigError, match="no end"):
        load_train_config(None, ["trainer.max_epochs=-1", "trainer.max_steps=-1"])


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nmax_studys = 4\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*did you mean 'max_studies'"):
        load_train_config(bad)


def test_cli_usage_errors_exit_2(cli, tmp_path):
    res = cli("train", "--data", tmp_path, "--out", tmp_path / "o", "optim.lrr=1")
    assert res.exit_code == 2
    assert "did you mean 'lr'" in res.output


def test_cli_missing_dataset_exits_1(cli, tmp_path):
    res = cli("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "o", "--max-steps", "1")
    assert res.exit_code == 1
    assert "nowhere" in res.output


def test_cli_requires_data_and_out(cli):
    res = cli("train", "--max-steps", "1")
    assert res.exit_code == 2
    assert "--data" in res.output
