"""Typed config loading."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from metstrack.config import load_config, to_dict
from metstrack.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    schedule: str = "cosine"


@dataclass(frozen=True)
class Cfg:
    seed: int = 0
    shape: tuple[int, int, int] = (48, 48, 48)
    optim: Optim = field(default_factory=Optim)
    name: str | None = None


def test_defaults_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("seed = 3\n[optim]\nlr = 0.01\n")
    cfg = load_config(Cfg, p, ["optim.schedule=poly", "shape=[32,32,16]"])
    assert cfg == Cfg(seed=3, shape=(32, 32, 16), optim=Optim(lr=0.01, schedule="poly"))
    assert to_dict(cfg)["shape"] == [32, 32, 16]


def test_unknown_key_suggests(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optim]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError, match=r"c.toml.optim: unknown key 'learning_rat'"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        load_config(Cfg, None, ["sed=1"])


def test_bad_value_type():
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(Cfg, None, ["seed=1.5"])
    with pytest.raises(ConfigError, match="expected 3 values"):
        load_config(Cfg, None, ["shape=[1,2]"])


def test_typed_values_apply_last_and_skip_none(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("seed = 3\n[optim]\nlr = 0.01\n")
    cfg = load_config(
        Cfg,
        p,
        ["optim.schedule=poly"],
        values={"seed": 7, "optim.lr": None, "shape": (8, 8, 8), "name": "x"},
    )
    assert cfg == Cfg(seed=7, shape=(8, 8, 8), optim=Optim(lr=0.01, schedule="poly"), name="x")
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(Cfg, values={"seed": 1.5})
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        load_config(Cfg, values={"sed": 1})


def test_matching_modes_are_typed_choices_checked_by_the_loader():
    """Modes are Literal types: the loader refuses a bad value by name, with a suggestion."""
    import typing

    from metstrack.config import load_config
    from metstrack.errors import ConfigError
    from metstrack.metrics.matching import MATCH_MODES, MatchMode
    from metstrack.workflows.evaluate import EvaluationConfig

    hints = typing.get_type_hints(EvaluationConfig)
    assert typing.get_args(hints["mode"]) == MATCH_MODES == typing.get_args(MatchMode)
    assert load_config(EvaluationConfig, None, ["mode=brats"]).mode == "brats"
    with pytest.raises(ConfigError, match=r"mode.*'brat'.*did you mean 'brats'"):
        load_config(EvaluationConfig, None, ["mode=brat"])
    with pytest.raises(ConfigError, match="did you mean 'pairs'"):
        load_config(EvaluationConfig, None, ["match_objective=pair"])


def _config_classes():
    from metstrack.preprocess.config import PreprocessConfig
    from metstrack.survival.config import SurvivalConfig
    from metstrack.train.config import TrainConfig
    from metstrack.train.pretrain_config import PretrainConfig
    from metstrack.train.search_space import SearchConfig

    return {
        "survival": SurvivalConfig,
        "train": TrainConfig,
        "pretrain": PretrainConfig,
        "preprocess": PreprocessConfig,
        "search": SearchConfig,
    }


@pytest.mark.parametrize(
    ("section", "key", "bad", "suggestion"),
    [
        ("survival", "origin", "first_sca", "first_scan"),
        ("survival", "rate_method", "log-ols", "log_ols"),
        ("survival", "impute", "medain", "median"),
        ("survival", "groups", "tertile", "tertiles"),
        ("train", "data.window", "frist", "first"),
        ("train", "data.missing_modality", "zeroes", "zero"),
        ("train", "loss.name", "dicfocal", "dicefocal"),
        ("train", "optim.schedule", "pol", "poly"),
        ("train", "validation.score", "lesion-f1", "lesion_f1"),
        ("train", "trainer.precision", "bf16_mixed", "bf16-mixed"),
        ("pretrain", "objective.name", "restor", "restore"),
        ("preprocess", "brain_method", "deepbed", "deepbet"),
        ("preprocess", "normalize", "zscor", "zscore"),
        ("search", "sampler", "tpee", "tpe"),
        ("search", "pruner", "percentil", "percentile"),
    ],
)
def test_a_wrong_mode_in_a_toml_names_the_field_and_suggests(
    tmp_path, section, key, bad, suggestion
):
    """Every mode is a Literal type: a wrong value in TOML is refused by the loader
    with the file, the dotted field, the valid values (declared order) and the closest one."""
    import typing

    from metstrack.config import load_config
    from metstrack.errors import ConfigError

    cls = _config_classes()[section]
    table, _, name = key.rpartition(".")
    path = tmp_path / "cfg.toml"
    path.write_text((f"[{table}]\n" if table else "") + f'{name} = "{bad}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cls, path)
    message = str(info.value)
    assert f"cfg.toml.{key}: {bad!r} is not allowed" in message
    assert f"did you mean {suggestion!r}" in message
    node = cls
    for part in key.split("."):
        node = typing.get_type_hints(node)[part]
    assert f"valid: {', '.join(typing.get_args(node))}" in message
