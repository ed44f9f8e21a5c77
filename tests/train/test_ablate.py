"""Ablations: variants, the paired bootstrap on differences, the table of a two-variant run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metstrack.errors import ConfigError
from metstrack.metrics.study import evaluate_study
from metstrack.synth.config import SynthConfig
from metstrack.train.ablate import (
    compare_variants,
    expand_variants,
    make_variant,
    markdown_table,
)
from metstrack.train.config import load_train_config
from metstrack.workflows.synth import generate_cohort

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "configs" / "ablate_tiny.toml"


@pytest.fixture(scope="module")
def synth_cohort(tmp_path_factory) -> Path:
    cfg = SynthConfig(
        n_patients=4,
        shape=32,
        seed=1,
        max_studies=3,
        motion_max_deg=0,
        motion_max_mm=0,
        acquisition="fixed",
        labelled="0.3",
        split_fractions=(0.5, 0.25, 0.25),
    )
    return generate_cohort(cfg, tmp_path_factory.mktemp("ablate_cohort"))


def _ball(shape, centre, r):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= r * r


def _evals(n_patients: int, *, extra_fp: int = 0, seed: int = 0):
    """Two studies per patient, one lesion each; ``extra_fp`` false blobs per study."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        for s in range(2):
            ref = _ball((24, 24, 24), (8, 8, 8), 2 + rng.integers(0, 2))
            pred = ref.copy()
            for k in range(extra_fp):
                pred |= _ball((24, 24, 24), (18, 6 + 5 * k, 18), 1)
            out.append(
                evaluate_study(
                    pred, ref, spacing_mm=(1, 1, 1), patient_id=f"P{p}", study_id=f"S{s}"
                )
            )
    return out


def test_expand_variants_puts_base_first_and_expands_drop_each():
    base = load_train_config(BASE)
    names = expand_variants(["no-memory", "drop-each", "no-memory"], base)
    assert names == ["base", "no-memory", "drop-T1", "drop-CT1", "drop-T2", "drop-FLAIR"]
    with pytest.raises(ConfigError, match="no-memory"):
        expand_variants(["no-memroy"], base)
    with pytest.raises(ConfigError, match="FLAIR"):
        expand_variants(["drop-FLAIRR"], base)


def test_variants_change_only_what_they_name():
    base = load_train_config(BASE)
    v = make_variant("no-memory", base)
    assert v.config.model.name == "unet" and v.config.trainer == base.trainer
    v = make_variant("drop-CT1", base)
    assert v.config.model.modalities == ("T1", "T2", "FLAIR") and v.config.model.in_channels == 3
    v = make_variant("seq-1", base)
    assert v.config.data.max_studies == 1 and v.per_study
    assert make_variant("prior-mask", base).config.model.prior_mask
    with pytest.raises(ConfigError, match="--pretrained"):
        make_variant("pretrain", base)
    assert make_variant("pretrain", base, pretrained="w.pt").config.trainer.init_weights == "w.pt"


def test_paired_bootstrap_differences():
    base = _evals(6)
    same = _evals(6)
    worse = _evals(6, extra_fp=2)
    table = compare_variants({"base": base, "same": same, "worse": worse}, n_bootstrap=300, seed=1)
    t = table.set_index(["variant", "metric"])
    # an identical variant differs by exactly 0 in every replicate (paired)
    assert t.loc[("same", "fp_per_scan"), "diff"] == 0
    assert t.loc[("same", "fp_per_scan"), "diff_ci_low"] == 0
    assert t.loc[("same", "fp_per_scan"), "diff_ci_high"] == 0
    # two extra false positives per scan: difference 2 with a tight interval
    assert t.loc[("worse", "fp_per_scan"), "diff"] == pytest.approx(2.0)
    assert t.loc[("worse", "fp_per_scan"), "diff_ci_low"] == pytest.approx(2.0)
    assert t.loc[("worse", "fp_per_scan"), "better"] == "no"
    assert t.loc[("worse", "lesion_f1"), "diff"] < 0
    assert t.loc[("worse", "lesion_sensitivity"), "diff"] == 0
    # unpaired intervals of each variant are wider than the paired difference's
    lo, hi = t.loc[("base", "lesion_f1"), ["ci_low", "ci_high"]]
    assert lo <= t.loc[("base", "lesion_f1"), "value"] <= hi
    md = markdown_table(table)
    assert md.count("\n| ") == 3 and "Δ fp_per_scan vs base" in md


def test_ablate_cli_rejects_unknown_variant(cli, synth_cohort, tmp_path):
    res = cli(
        "ablate",
        "--config",
        BASE,
        "--data",
        synth_cohort,
        "--out",
        tmp_path,
        "--variants",
        "no-memroy",
    )
    assert res.exit_code == 2
    assert "no-memory" in res.output


def test_pretrain_variant_pretrains_once_when_no_weights_are_given(synth_cohort, tmp_path):
    import json

    from metstrack.train.ablate import ablate

    base = load_train_config(BASE, ["trainer.max_steps=2"])
    result = ablate(
        base, synth_cohort, tmp_path, variants=["pretrain"], pretrain_steps=2, n_bootstrap=0
    )
    assert result.variants == ("base", "pretrain")
    assert (tmp_path / "pretrain" / "pretrained.pt").is_file()
    report = json.loads((tmp_path / "variants" / "pretrain" / "init_weights.json").read_text())
    assert "convlstm.conv.weight" in report["loaded"]
    assert not (tmp_path / "variants" / "base" / "init_weights.json").exists()
    # without bootstrap the intervals are undefined, the differences are not
    t = result.table.set_index(["variant", "metric"])
    assert np.isnan(t.loc[("pretrain", "dice"), "diff_ci_low"])
    assert np.isfinite(t.loc[("pretrain", "dice"), "diff"])
