"""``metstrack demo``: the whole pipeline on a fresh machine, no data, no network.

Steps (each one is an ordinary metstrack command, printed before it runs, so
any step can be rerun alone):

1. ``synth``       a small synthetic longitudinal cohort (follow-ups misaligned)
2. ``validate``    the dataset checks
3. ``preprocess``  co-registration of every study to the patient's baseline
4. model           the checkpoint shipped with metstrack (trained with the
                   command and config in ``metstrack/data/stt_demo.json``), or
                   ``train`` within a CPU budget (``--train-minutes``)
5. ``predict``     Segmentation-Through-Time over each patient's studies, on
                   each study's native grid
6. ``evaluate``    lesion-wise and small-lesion metrics against the labels
7. ``track``       lesion identities through time, burden, rates, response
8. ``synth --clinical-only`` + ``survival``  Cox and Kaplan-Meier on a
                   synthetic clinical cohort of the published size (1,429)
9. ``report``      the HTML report

Every output lands under one folder and every step is registered in the
cohort catalog ``<out>/catalog.sqlite``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from metstrack.errors import MetstrackError

log = logging.getLogger(__name__)

#: The checkpoint shipped with the package and its provenance.
SHIPPED_CHECKPOINT = "stt_demo.pt"
SHIPPED_PROVENANCE = "stt_demo.json"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo.

    Attributes:
        out: Output folder.
        patients: Imaging patients of the synthetic cohort.
        shape: Grid edge of each synthetic study (voxels).
        spacing_mm: Voxel size of the synthetic cohort and of preprocessing (mm); the
            shipped model was trained on full-size heads at 1.5 mm (128 x 1.5 = 192 mm).
        max_studies: Most studies per patient.
        clinical_patients: Patients of the clinical-only survival cohort.
        seed: Master seed of every step.
        workers: Worker processes for preprocessing and evaluation.
        train_minutes: 0 uses the shipped checkpoint; > 0 trains a small STT for this long.
        train_steps: When > 0, cap training at this many steps (tests).
        bootstrap: Bootstrap resamples of the evaluation's confidence intervals.
    """

    out: Path = Path("metstrack-demo")
    patients: int = 4
    shape: int = 128
    spacing_mm: float = 1.5
    max_studies: int = 4
    clinical_patients: int = 1429
    seed: int = 0
    workers: int = 2
    train_minutes: float = 0.0
    train_steps: int = 0
    bootstrap: int = 1000


@dataclass
class DemoResult:
    """What the demo produced.

    Attributes:
        out: Output folder.
        report: ``index.html`` of the report.
        headline: The closing summary's numbers.
        steps: ``(name, seconds, command)`` per step.
    """

    out: Path
    report: Path
    headline: dict[str, float | str] = field(default_factory=dict)
    steps: list[tuple[str, float, str]] = field(default_factory=list)


def shipped_checkpoint() -> Path | None:
    """Path of the checkpoint shipped in ``metstrack/data``, or ``None`` when absent."""
    p = Path(str(resources.files("metstrack") / "data" / SHIPPED_CHECKPOINT))
    return p if p.is_file() else None


def _run_cli(argv: Sequence[str]) -> None:
    """Run one metstrack command in-process; raise MetstrackError on a non-zero exit."""
    import typer

    from metstrack.cli.main import app

    where = f"step `metstrack {' '.join(argv)}`"
    try:
        code = app(list(argv), standalone_mode=False, prog_name="metstrack")
        if isinstance(code, int) and code:
            raise MetstrackError(f"{where} failed (exit {code})")
    except typer.Exit as exc:
        if exc.exit_code:
            raise MetstrackError(f"{where} failed (exit {exc.exit_code})") from None
    except typer.TyperException as exc:  # usage errors
        raise MetstrackError(f"{where}: {exc}") from None
    except SystemExit as exc:
        if exc.code:
            raise MetstrackError(f"{where} failed (exit {exc.code})") from None


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def run_demo(
    cfg: DemoConfig,
    *,
    announce: Callable[[int, int, str, str], None] | None = None,
) -> DemoResult:
    """Run the whole pipeline; return the report path and headline numbers.

    Args:
        cfg: Settings.
        announce: Called before each step as ``(index, total, name, command)``.

    Raises:
        MetstrackError: A step failed (the message names the step's command).
    """
    from metstrack.catalog import Catalog, OutputRecord, PredictionRecord, TrackRecord
    from metstrack.core import schema
    from metstrack.io.release import read_release

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    d = {
        k: out / k
        for k in (
            "data",
            "preprocessed",
            "model",
            "predictions",
            "evaluation",
            "tracking",
            "clinical",
            "survival",
            "report",
        )
    }
    result = DemoResult(out=out, report=d["report"] / "index.html")
    catalog = Catalog.open(out / "catalog.sqlite")
    ckpt_src = shipped_checkpoint()
    train = cfg.train_minutes > 0 or cfg.train_steps > 0 or ckpt_src is None
    ckpt = d["model"] / ("run/checkpoints/best.ckpt" if train else SHIPPED_CHECKPOINT)

    steps: list[tuple[str, list[str]]] = [
        (
            "synth",
            [
                "synth",
                "--patients",
                str(cfg.patients),
                "--seed",
                str(cfg.seed),
                "--shape",
                str(cfg.shape),
                "--spacing",
                str(cfg.spacing_mm),
                "--studies-max",
                str(cfg.max_studies),
                "--workers",
                str(cfg.workers),
                "--out",
                str(d["data"]),
            ],
        ),
        ("validate", ["validate", str(d["data"])]),
        (
            "preprocess",
            [
                "preprocess",
                "--data",
                str(d["data"]),
                "--out",
                str(d["preprocessed"]),
                "--workers",
                str(cfg.workers),
                "--catalog",
                str(out / "catalog.sqlite"),
                "--set",
                f"spacing_mm={cfg.spacing_mm}",
            ],
        ),
    ]
    if train:
        cmd = [
            "train",
            "--config",
            str(_demo_config()),
            "--data",
            str(d["preprocessed"]),
            "--out",
            str(d["model"] / "run"),
            "--seed",
            str(cfg.seed),
        ]
        # no shipped checkpoint and no budget given: keep the demo within minutes
        minutes = cfg.train_minutes or (5.0 if cfg.train_steps <= 0 else 0.0)
        if minutes > 0:
            cmd += ["--time-budget-min", str(minutes)]
        if cfg.train_steps > 0:
            cmd += ["--max-steps", str(cfg.train_steps)]
        steps.append(("train", cmd))
    else:
        steps.append(("model", []))
    steps += [
        (
            "predict",
            [
                "predict",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(d["preprocessed"]),
                "--out",
                str(d["predictions"]),
            ],
        ),
        (
            "evaluate",
            [
                "evaluate",
                "--pred",
                str(d["predictions"]),
                "--ref",
                str(d["data"]),
                "--out",
                str(d["evaluation"]),
                "--workers",
                str(cfg.workers),
                "--seed",
                str(cfg.seed),
                "--bootstrap",
                str(cfg.bootstrap),
            ],
        ),
        (
            "track",
            [
                "track",
                "--data",
                str(d["data"]),
                "--masks",
                str(d["predictions"]),
                "--transforms",
                str(d["preprocessed"]),
                "--out",
                str(d["tracking"]),
            ],
        ),
        (
            "clinical cohort",
            [
                "synth",
                "--clinical-only",
                "--patients",
                str(cfg.clinical_patients),
                "--seed",
                str(cfg.seed),
                "--out",
                str(d["clinical"]),
            ],
        ),
        (
            "survival",
            [
                "survival",
                "--data",
                str(d["clinical"]),
                "--out",
                str(d["survival"]),
                "--landmark-days",
                "90",
            ],
        ),
        (
            "report",
            [
                "report",
                "--data",
                str(d["data"]),
                "--predictions",
                str(d["predictions"]),
                "--evaluation",
                str(d["evaluation"]),
                "--tracking",
                str(d["tracking"]),
                "--survival",
                str(d["survival"]),
                "--out",
                str(d["report"]),
                "--title",
                "metstrack demo (synthetic cohort)",
            ],
        ),
    ]
    total = len(steps)
    for i, (name, argv) in enumerate(steps, start=1):
        if name == "train" and not read_release(d["preprocessed"]).split("val"):
            argv = [*argv, "validation.enabled=false"]  # too few patients for a validation split
        command = (
            "metstrack " + " ".join(argv) if argv else f"copy the shipped checkpoint to {ckpt}"
        )
        if announce:
            announce(i, total, name, command)
        t0 = time.perf_counter()
        if name == "model":
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpt_src, ckpt)
            prov = Path(str(ckpt_src)).with_name(SHIPPED_PROVENANCE)
            if prov.is_file():
                shutil.copyfile(prov, ckpt.with_name(SHIPPED_PROVENANCE))
        else:
            _run_cli(argv)
        secs = time.perf_counter() - t0
        result.steps.append((name, secs, command))
        _register(
            catalog,
            name,
            argv,
            d,
            out,
            OutputRecord,
            PredictionRecord,
            TrackRecord,
            schema,
            read_release,
        )
    catalog.close()
    result.headline = _headline(d)
    from metstrack.core.atomic import write_json_atomic

    write_json_atomic(
        out / "demo_summary.json",
        {
            "headline": result.headline,
            "report": str(result.report),
            "steps": [{"name": n, "seconds": s, "command": c} for n, s, c in result.steps],
            "config": {k: str(v) for k, v in cfg.__dict__.items()},
        },
    )
    return result


def _demo_config() -> Path:
    """The TOML config of the demo's small STT (shipped in ``metstrack/data``)."""
    return Path(str(resources.files("metstrack") / "data" / "stt_demo.toml"))


def _register(
    catalog, name, argv, d, out, OutputRecord, PredictionRecord, TrackRecord, schema, read_release
) -> None:
    """Register a finished step's outputs in the catalog (one transaction per call)."""
    import pandas as pd

    folder = {
        "synth": d["data"],
        "validate": None,
        "preprocess": None,
        "train": d["model"],
        "model": d["model"],
        "predict": d["predictions"],
        "evaluate": d["evaluation"],
        "track": d["tracking"],
        "clinical cohort": d["clinical"],
        "survival": d["survival"],
        "report": d["report"],
    }[name]
    if name == "synth":
        catalog.register_dataset(read_release(d["data"]))
    if folder is None:  # validate writes nothing; preprocess registers itself
        return
    kind = name.replace(" ", "-")
    run_id = catalog.begin_run(
        kind, {"argv": list(argv)}, source=str(d["data"]), output=str(folder)
    )
    catalog.add_outputs(run_id, [OutputRecord(p) for p in _files(folder)])
    if name == "predict":
        rows = []
        for pdir in sorted((folder / schema.PREDICTIONS_DIR / "patientId").glob("*/studyId/*")):
            mask = next(iter(sorted(pdir.glob(f"{schema.PREDICTION_MASK}.nii*"))), None)
            prob = next(iter(sorted(pdir.glob(f"{schema.PREDICTION_PROB}.nii*"))), None)
            if mask is not None:
                rows.append(
                    PredictionRecord(pdir.name, str(mask), None if prob is None else str(prob))
                )
        catalog.add_predictions(run_id, rows)
    if name == "track":
        traj = pd.read_csv(folder / "trajectories.csv", dtype={"study_id": str})
        present = traj[traj["present"].astype(bool)]
        catalog.add_tracks(
            run_id,
            [
                TrackRecord(int(r.lesion_id), str(r.study_id), int(r.lesion_id))
                for r in present.itertuples(index=False)
            ],
        )
    catalog.finish_run(run_id)


def _headline(d: dict[str, Path]) -> dict[str, float | str]:
    h: dict[str, float | str] = {}
    ev = d["evaluation"] / "summary.json"
    if ev.is_file():
        e = json.loads(ev.read_text())["headline"]
        h.update(
            {
                "lesion_f1": e["lesion_f1"],
                "sensitivity_lt_10mm3": e["small_lesion_sensitivity"],
                "lesion_sensitivity": e["lesion_sensitivity"],
                "fp_per_scan": e["fp_per_scan"],
                "voxel_dice": e["dice"],
            }
        )
    tr = d["tracking"] / "trajectories.csv"
    if tr.is_file():
        import pandas as pd

        t = pd.read_csv(tr)
        h["tracked_lesions"] = float(t[["patient_id", "lesion_id"]].drop_duplicates().shape[0])
    sv = d["survival"] / "summary.json"
    if sv.is_file():
        s = json.loads(sv.read_text())["headline"]
        h.update(
            {
                "hr_per_cm3_month": s["hr_rate_volume_per_cm3_month"],
                "hr_lower_95": s["hr_lower_95"],
                "hr_upper_95": s["hr_upper_95"],
                "survival_patients": s["n_patients"],
            }
        )
    return h
