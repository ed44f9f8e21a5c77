"""Ablations: train named variants of a base config under one budget and compare them.

Variants (``--variants``, comma separated; ``base`` is always run first):

=====================  ===========================================================
``base``               the base config unchanged
``no-memory``          ``model.name = "unet"`` (the same U-Net without the ConvLSTM)
``memory``             ``model.name = "stt"``
``prior-mask``         ``model.prior_mask = true`` (previous mask as an extra input)
``no-prior-mask``      ``model.prior_mask = false``
``pretrain``           ``trainer.init_weights`` = the pretrained weights
                       (``--pretrained FILE``, or pretrained once in
                       ``<out>/pretrain`` when no file is given)
``no-pretrain``        ``trainer.init_weights = ""``
``seq-1``              sequences of one study: ``data.max_studies = 1`` in
                       training, and every study predicted on its own
``seq-full``           the base sequence length (explicit name for tables)
``drop-<MOD>``         modality ``<MOD>`` (T1, CT1, T2, FLAIR) removed from the input
``drop-each``          expands to ``drop-<MOD>`` for every modality of the base
=====================  ===========================================================

Every variant keeps the base's ``[trainer]`` settings: the same seed and the
same budget (steps, epochs or minutes). Each trained variant is evaluated on
the same patients (``test`` split by default) with
:func:`metstrack.metrics.study.evaluate_study` on every study that has a
reference mask on disk. The comparison table gives, per variant and metric,
the cohort value with its patient-level bootstrap interval and the
*difference* to ``base`` with a **paired** bootstrap interval: the same
resampled patients score both variants in each replicate, so patient
difficulty cancels out. ``p_boot`` is the two-sided bootstrap share of
replicates on the other side of zero.

Outputs: ``<out>/variants/<name>/`` (run folder and ``evaluation.csv``),
``<out>/ablation.csv`` (long form), ``<out>/ablation.md`` (one Markdown
table), ``<out>/ablation.json`` (settings and timings).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metstrack.config import to_dict
from metstrack.core.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from metstrack.errors import ConfigError, DatasetError, did_you_mean
from metstrack.infer.sliding import predict_sequence
from metstrack.io.checkpoint import load_checkpoint
from metstrack.io.release import read_release
from metstrack.metrics.cohort import SMALL_STRATUM, _bootstrap_weights, _study_metrics
from metstrack.metrics.study import StudyEvaluation, evaluate_study
from metstrack.train.api import train
from metstrack.train.cache import StudyCache
from metstrack.train.config import DataConfig, TrainConfig, check_train_config
from metstrack.train.dataset import PatientSequenceDataset
from metstrack.train.pretrain import pretrain
from metstrack.train.pretrain_config import PretrainConfig, PretrainTrainerConfig
from metstrack.types import MODALITIES, Cohort, Patient

log = logging.getLogger(__name__)

#: Variant names without a parameter.
SIMPLE_VARIANTS = (
    "base",
    "no-memory",
    "memory",
    "prior-mask",
    "no-prior-mask",
    "pretrain",
    "no-pretrain",
    "seq-1",
    "seq-full",
    "drop-each",
)
#: Table metrics: (column name, metric name of metrics.cohort, higher is better).
TABLE_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("lesion_f1", "lesion_f1", True),
    ("lesion_sensitivity", "lesion_sensitivity", True),
    ("small_sensitivity", f"sensitivity_{SMALL_STRATUM}", True),
    ("fp_per_scan", "fp_per_scan", False),
    ("dice", "dice", True),
)


@dataclass(frozen=True)
class Variant:
    """One ablation variant.

    Attributes:
        name: Its name (table row).
        config: The training config it trains with.
        per_study: Predict every study on its own (sequence length 1).
    """

    name: str
    config: TrainConfig
    per_study: bool = False


@dataclass(frozen=True)
class AblationResult:
    """Outcome of :func:`ablate`.

    Attributes:
        table: Long-form table (one row per variant and metric).
        csv: ``ablation.csv`` path.
        markdown: ``ablation.md`` path.
        variants: Variant names in order.
        n_patients: Evaluation patients.
        n_studies: Evaluated studies per variant.
    """

    table: pd.DataFrame
    csv: Path
    markdown: Path
    variants: tuple[str, ...]
    n_patients: int
    n_studies: int


def expand_variants(names: Sequence[str], base: TrainConfig) -> list[str]:
    """Variant names with ``drop-each`` expanded, ``base`` first, duplicates removed.

    Raises:
        ConfigError: Unknown variant (with a suggestion) or modality.
    """
    out = ["base"]
    for raw in names:
        n = raw.strip()
        if not n:
            continue
        if n == "drop-each":
            out += [f"drop-{m}" for m in base.model.modalities]
        elif n.startswith("drop-"):
            m = n[len("drop-") :]
            if m not in base.model.modalities:
                raise ConfigError(
                    f"variant {n!r}: modality {m!r} is not an input of the base config "
                    f"({', '.join(base.model.modalities)}); {did_you_mean(m, MODALITIES)}"
                )
            out.append(n)
        elif n in SIMPLE_VARIANTS:
            out.append(n)
        else:
            known = [*SIMPLE_VARIANTS, *(f"drop-{m}" for m in MODALITIES)]
            raise ConfigError(f"unknown variant {n!r}; {did_you_mean(n, known)}")
    return list(dict.fromkeys(out))


def make_variant(name: str, base: TrainConfig, *, pretrained: str | Path | None = None) -> Variant:
    """The training config of variant ``name`` (see the module table)."""
    m, d, t = base.model, base.data, base.trainer
    per_study = False
    if name in ("base", "seq-full"):
        cfg = base
    elif name == "no-memory":
        cfg = dataclasses.replace(base, model=dataclasses.replace(m, name="unet"))
    elif name == "memory":
        cfg = dataclasses.replace(base, model=dataclasses.replace(m, name="stt"))
    elif name in ("prior-mask", "no-prior-mask"):
        on = name == "prior-mask"
        cfg = dataclasses.replace(base, model=dataclasses.replace(m, prior_mask=on))
    elif name == "pretrain":
        if not pretrained:
            raise ConfigError("variant 'pretrain' needs pretrained weights (--pretrained FILE)")
        cfg = dataclasses.replace(
            base, trainer=dataclasses.replace(t, init_weights=str(pretrained))
        )
    elif name == "no-pretrain":
        cfg = dataclasses.replace(base, trainer=dataclasses.replace(t, init_weights=""))
    elif name == "seq-1":
        cfg = dataclasses.replace(base, data=dataclasses.replace(d, max_studies=1))
        per_study = True
    elif name.startswith("drop-"):
        drop = name[len("drop-") :]
        mods = tuple(x for x in m.modalities if x != drop)
        if len(mods) == len(m.modalities) or not mods:
            raise ConfigError(f"variant {name!r}: cannot drop {drop!r} from {list(m.modalities)}")
        cfg = dataclasses.replace(
            base, model=dataclasses.replace(m, modalities=mods, in_channels=len(mods))
        )
    else:
        raise ConfigError(f"unknown variant {name!r}; {did_you_mean(name, SIMPLE_VARIANTS)}")
    check_train_config(cfg, where=f"variant {name}")
    return Variant(name, cfg, per_study)


def evaluation_patients(cohort: Cohort, split: str) -> list[Patient]:
    """Patients of ``split`` (falling back to ``val`` when the split is empty)."""
    pats = [p for p in cohort.patients if p.split == split and p.studies]
    if not pats and split != "val":
        pats = [p for p in cohort.patients if p.split == "val" and p.studies]
        if pats:
            log.warning("no %r patients; evaluating the ablation on the 'val' split", split)
    if not pats:
        raise DatasetError(
            f"{cohort.root}: no patient in split {split!r} (or 'val') to evaluate the ablation on"
        )
    return pats


def evaluate_run(
    ckpt: str | Path,
    patients: Sequence[Patient],
    cfg: TrainConfig,
    cache_dir: str | Path,
    *,
    per_study: bool = False,
    threshold: float = 0.5,
) -> list[StudyEvaluation]:
    """Predict and evaluate every study with a reference mask of ``patients``.

    Args:
        ckpt: The run's best checkpoint.
        patients: Evaluation patients (studies co-registered in time).
        cfg: The run's training config (modalities, patch, overlap).
        cache_dir: Study cache folder.
        per_study: Predict each study as a one-study sequence (memory reset).
        threshold: Probability threshold of the lesion class.

    Returns:
        One :class:`StudyEvaluation` per study with a reference.
    """
    model, mcfg = load_checkpoint(ckpt)
    cache = StudyCache(
        cache_dir,
        tuple(mcfg.modalities),
        missing_modality=cfg.data.missing_modality,
        use_all_labels=True,
    )
    data = DataConfig(
        missing_modality=cfg.data.missing_modality,
        use_all_labels=True,
        crop_foreground=cfg.data.crop_foreground,
        pad_multiple=cfg.data.pad_multiple,
    )
    ds = PatientSequenceDataset(
        list(patients), cache, data, None, train=False, patch_size_vox=tuple(mcfg.roi_size)
    )
    out: list[StudyEvaluation] = []
    with torch.no_grad():
        for i, p in enumerate(patients):
            item = ds[i]
            images = torch.from_numpy(item.image)
            if per_study:
                probs = torch.cat(
                    [
                        predict_sequence(
                            model,
                            images[t : t + 1],
                            roi_size=tuple(mcfg.roi_size),
                            overlap=cfg.validation.overlap,
                        )
                        for t in range(images.shape[0])
                    ]
                )
            else:
                probs = predict_sequence(
                    model, images, roi_size=tuple(mcfg.roi_size), overlap=cfg.validation.overlap
                )
            for t, sid in enumerate(item.study_ids):
                if not item.has_label[t]:
                    continue
                pred = probs[t, 1].numpy() >= threshold
                out.append(
                    evaluate_study(
                        pred,
                        item.label[t] > 0,
                        affine=item.affine,
                        spacing_mm=None if item.affine is not None else item.spacing_mm,
                        patient_id=p.patient_id,
                        study_id=sid,
                    )
                )
    return out


def _per_patient(
    evals: Sequence[StudyEvaluation], patients: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric, per-patient numerator and denominator sums (patient order given)."""
    idx = {p: i for i, p in enumerate(patients)}
    strata = [s.stratum for s in evals[0].strata] if evals else [SMALL_STRATUM]
    defs = dict(_study_metrics(strata))
    out = {}
    for _col, name, _hi in TABLE_METRICS:
        _kind, num, den = defs[name]
        n, d = np.zeros(len(patients)), np.zeros(len(patients))
        for e in evals:
            n[idx[e.patient_id]] += float(num(e))
            d[idx[e.patient_id]] += float(den(e))
        out[name] = (n, d)
    return out


def _ratio_boot(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    nb, db = w @ num, w @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(db > 0, nb / np.where(db > 0, db, 1.0), np.nan)


def _verdict(lo: float, hi: float, *, higher: bool) -> str:
    """``"yes"``/``"no"`` when the interval of the difference excludes 0, else ``"n.s."``."""
    if math.isnan(lo) or math.isnan(hi):
        return ""
    if lo <= 0 <= hi:
        return "n.s."
    return "yes" if (lo > 0) == higher else "no"


def compare_variants(
    evaluations: dict[str, list[StudyEvaluation]],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Long-form comparison table with paired patient-bootstrap intervals on differences.

    Args:
        evaluations: Study evaluations per variant (``"base"`` first); every
            variant must cover the same patients.
        n_bootstrap: Patient resamples (shared by all variants: paired).
        confidence: Interval coverage.
        seed: Resampling seed.

    Returns:
        Columns ``variant, metric, value, ci_low, ci_high, diff, diff_ci_low,
        diff_ci_high, p_boot, better, n_patients, n_studies``.
    """
    if "base" not in evaluations:
        raise ValueError("compare_variants needs a 'base' variant")
    patients = list(dict.fromkeys(e.patient_id for e in evaluations["base"]))
    for name, ev in evaluations.items():
        extra = {e.patient_id for e in ev} - set(patients)
        if extra:
            raise ValueError(f"variant {name!r} has patients {sorted(extra)} the base lacks")
    w = _bootstrap_weights(len(patients), n_bootstrap, seed) if n_bootstrap > 0 else None
    a = (1.0 - confidence) / 2.0
    base_pp = _per_patient(evaluations["base"], patients)
    rows = []
    for name, ev in evaluations.items():
        pp = _per_patient(ev, patients)
        for col, metric, higher in TABLE_METRICS:
            n, d = pp[metric]
            bn, bd = base_pp[metric]
            value = float(n.sum() / d.sum()) if d.sum() > 0 else math.nan
            base_value = float(bn.sum() / bd.sum()) if bd.sum() > 0 else math.nan
            diff = value - base_value
            lo = hi = dlo = dhi = p = math.nan
            if w is not None:
                rv = _ratio_boot(n, d, w)
                rb = _ratio_boot(bn, bd, w)
                ok = np.isfinite(rv)
                if ok.any():
                    lo, hi = (float(x) for x in np.percentile(rv[ok], [100 * a, 100 * (1 - a)]))
                dd = rv - rb
                ok = np.isfinite(dd)
                if ok.any() and name != "base":
                    dlo, dhi = (float(x) for x in np.percentile(dd[ok], [100 * a, 100 * (1 - a)]))
                    p = float(min(1.0, 2 * min(np.mean(dd[ok] <= 0), np.mean(dd[ok] >= 0))))
            if name == "base":
                diff, dlo, dhi = 0.0, math.nan, math.nan
            better = "" if name == "base" else _verdict(dlo, dhi, higher=higher)
            rows.append(
                {
                    "variant": name,
                    "metric": col,
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    "diff": diff,
                    "diff_ci_low": dlo,
                    "diff_ci_high": dhi,
                    "p_boot": p,
                    "better": better,
                    "n_patients": len(patients),
                    "n_studies": len(ev),
                }
            )
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame, *, confidence: float = 0.95) -> str:
    """One Markdown table: a row per variant, per metric the value [CI] and the difference [CI]."""

    def f(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    metrics = list(dict.fromkeys(table["metric"]))
    pct = round(confidence * 100)
    head = ["variant"] + [f"{m} [{pct}% CI]" for m in metrics] + [f"Δ {m} vs base" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, grp in table.groupby("variant", sort=False):
        g = grp.set_index("metric")
        cells = [str(variant)]
        for m in metrics:
            r = g.loc[m]
            cells.append(f"{f(r['value'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]")
        for m in metrics:
            r = g.loc[m]
            if variant == "base":
                cells.append("—")
            else:
                cells.append(f"{r['diff']:+.3f} [{f(r['diff_ci_low'])}, {f(r['diff_ci_high'])}]")
        lines.append("| " + " | ".join(cells) + " |")
    n_p = int(table["n_patients"].iloc[0]) if len(table) else 0
    lines.append("")
    lines.append(
        f"Values: cohort estimates over {n_p} evaluation patients with {pct}% patient-level "
        "bootstrap intervals; Δ: variant minus base with paired bootstrap intervals (the same "
        "resampled patients score both). small_sensitivity is the sensitivity for reference "
        "lesions under 10 mm3; fp_per_scan is lower-is-better."
    )
    return "\n".join(lines) + "\n"


def ablate(
    base: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    variants: Sequence[str] = ("no-memory",),
    pretrained: str | Path | None = None,
    pretrain_steps: int | None = None,
    eval_split: str = "test",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cohort: Cohort | None = None,
) -> AblationResult:
    """Train every variant with the base budget and seed, evaluate, and compare with ``base``.

    Args:
        base: The base training config.
        data_dir: Dataset in the release layout (co-registered studies).
        out_dir: Ablation folder (see the module docstring).
        variants: Variant names (``base`` is added first).
        pretrained: Weights for the ``pretrain`` variant; without them the
            encoder is pretrained once in ``<out>/pretrain`` (restoration objective,
            ``pretrain_steps`` steps, default the base's ``max_steps`` or 100).
        pretrain_steps: Steps of that pretraining.
        eval_split: Split evaluated (falls back to ``val`` when empty).
        n_bootstrap: Patient resamples of the intervals.
        confidence: Interval coverage.
        seed: Bootstrap seed.
        cohort: An already-read cohort.

    Returns:
        An :class:`AblationResult`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = expand_variants(variants, base)
    if cohort is None:
        cohort = read_release(data_dir)
    eval_patients = evaluation_patients(cohort, eval_split)
    cache_dir = Path(base.data.cache_dir) if base.data.cache_dir else out / "cache"
    timings: dict[str, float] = {}
    if "pretrain" in names and not pretrained:
        steps = pretrain_steps or (base.trainer.max_steps if base.trainer.max_steps > 0 else 100)
        pcfg = PretrainConfig(
            model=base.model,
            trainer=PretrainTrainerConfig(
                max_steps=int(steps),
                seed=base.trainer.seed,
                accelerator=base.trainer.accelerator,
                threads=base.trainer.threads,
                progress_bar=base.trainer.progress_bar,
            ),
        )
        t0 = time.perf_counter()
        pretrained = pretrain(pcfg, data_dir, out / "pretrain", cohort=cohort).weights
        timings["pretraining_s"] = time.perf_counter() - t0
    built = [make_variant(n, base, pretrained=pretrained) for n in names]
    evaluations: dict[str, list[StudyEvaluation]] = {}
    for v in built:
        run_dir = out / "variants" / v.name
        cfg = v.config
        if not cfg.data.cache_dir:
            cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, cache_dir=str(cache_dir))
            )
        log.info("ablation variant %s: training in %s", v.name, run_dir)
        t0 = time.perf_counter()
        result = train(cfg, data_dir, run_dir, cohort=cohort)
        timings[f"{v.name}_train_s"] = time.perf_counter() - t0
        ev = evaluate_run(
            result.best_ckpt,
            eval_patients,
            cfg,
            cache_dir,
            per_study=v.per_study,
            threshold=cfg.validation.threshold,
        )
        if not ev:
            raise DatasetError(
                f"{data_dir}: no evaluation study has a reference mask on disk; the ablation "
                "needs labelled evaluation patients"
            )
        write_csv_atomic(run_dir / "evaluation.csv", pd.DataFrame([e.row() for e in ev]))
        evaluations[v.name] = ev
    table = compare_variants(evaluations, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    csv = write_csv_atomic(out / "ablation.csv", table)
    md = write_text_atomic(out / "ablation.md", markdown_table(table, confidence=confidence))
    write_json_atomic(
        out / "ablation.json",
        {
            "variants": {v.name: to_dict(v.config) for v in built},
            "per_study": {v.name: v.per_study for v in built},
            "eval_patients": [p.patient_id for p in eval_patients],
            "n_bootstrap": n_bootstrap,
            "confidence": confidence,
            "seed": seed,
            "pretrained": str(pretrained) if pretrained else None,
            "timings_s": timings,
        },
    )
    return AblationResult(
        table=table,
        csv=Path(csv),
        markdown=Path(md),
        variants=tuple(names),
        n_patients=len(eval_patients),
        n_studies=len(evaluations["base"]),
    )
