"""The demo's steps: each a library workflow, named, with the equivalent command shown.

:func:`demo_steps` lists them for a :class:`DemoConfig`; each ``*_step``
function builds one :class:`DemoStep` (name, equivalent ``metstrack`` command,
the call that runs it) writing under :class:`DemoPaths`. Building a step runs
nothing; :func:`metstrack.demo.run.run_demo` runs them in order.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from metstrack.config import load_config
from metstrack.core.atomic import write_json_atomic
from metstrack.errors import DatasetError, MetstrackError
from metstrack.infer.run import PredictRequest, predict_dataset
from metstrack.io.layouts import read_dataset
from metstrack.io.release import read_clinical_tables, read_release
from metstrack.io.tracks import MaskSource
from metstrack.io.validate import validate_dataset
from metstrack.preprocess.config import PreprocessConfig
from metstrack.preprocess.pipeline import preprocess_dataset
from metstrack.report.build import ReportInputs, build_report
from metstrack.survival.config import SurvivalConfig
from metstrack.synth.clinical import generate_clinical_only
from metstrack.synth.config import SynthConfig
from metstrack.train.api import train
from metstrack.train.config import load_train_config
from metstrack.workflows.evaluate import EvaluationConfig, evaluate_predictions
from metstrack.workflows.survival import PRIMARY, survival_from_dataset
from metstrack.workflows.synth import generate_cohort, write_clinical_only
from metstrack.workflows.track import track_dataset

log = logging.getLogger(__name__)

#: The checkpoint shipped with the package and its provenance.
SHIPPED_CHECKPOINT = "stt_demo.pt"
SHIPPED_PROVENANCE = "stt_demo.json"
#: Title of the demo's report.
REPORT_TITLE = "metstrack demo (synthetic cohort)"
#: Fewest deaths for a Cox fit of the rate alone (the usual 10 events per covariate).
MIN_DEATHS_FOR_COX = 10
#: What the tracked-burden survival step writes when it does not fit.
NOT_FITTED = "not_fitted.json"


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


@dataclass(frozen=True)
class DemoPaths:
    """Where each step of the demo writes, under one output folder.

    Attributes:
        out: The output folder.
        data: The synthetic imaging cohort (release layout).
        preprocessed: Preprocessed copy of the cohort.
        model: The checkpoint used (shipped copy, or a training run under ``run/``).
        predictions: Prediction root.
        evaluation: Evaluation tables.
        tracking: Tracking tables and maps.
        survival_tracked: Survival of the imaging cohort on its tracked burden
            (or ``not_fitted.json`` saying why not).
        clinical: The clinical-only survival cohort.
        survival: Survival tables and curves of the clinical cohort.
        report: The HTML report.
        catalog: The cohort catalog every step registers in.
    """

    out: Path
    data: Path
    preprocessed: Path
    model: Path
    predictions: Path
    evaluation: Path
    tracking: Path
    survival_tracked: Path
    clinical: Path
    survival: Path
    report: Path
    catalog: Path

    @classmethod
    def under(cls, out: Path) -> DemoPaths:
        """Each folder named after its field (the catalog is ``catalog.sqlite``)."""
        folders = [f.name for f in fields(cls)][1:-1]
        return cls(out, *(out / name for name in folders), out / "catalog.sqlite")


@dataclass(frozen=True)
class DemoStep:
    """One step: its name, the equivalent command (shown, recorded) and what it runs.

    ``argv_when_run``, when given, builds the command from what earlier steps
    wrote (the report's survival folder depends on whether step 8 could fit).
    """

    name: str
    fixed_argv: tuple[str, ...]
    run: Callable[[], object]
    argv_when_run: Callable[[], tuple[str, ...]] | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """The equivalent ``metstrack`` arguments (resolved now, for steps that depend on others)."""
        return self.argv_when_run() if self.argv_when_run else self.fixed_argv

    @property
    def command(self) -> str:
        """The metstrack command line that does the same as this step."""
        return "metstrack " + " ".join(self.argv)


def shipped_checkpoint() -> Path | None:
    """Path of the checkpoint shipped in ``metstrack/data``, or ``None`` when absent."""
    p = Path(str(resources.files("metstrack") / "data" / SHIPPED_CHECKPOINT))
    return p if p.is_file() else None


def demo_config_path() -> Path:
    """The TOML config of the demo's small STT (shipped in ``metstrack/data``)."""
    return Path(str(resources.files("metstrack") / "data" / "stt_demo.toml"))


def will_train(cfg: DemoConfig) -> bool:
    """Whether the demo trains a network (a budget was given, or no checkpoint is shipped)."""
    return cfg.train_minutes > 0 or cfg.train_steps > 0 or shipped_checkpoint() is None


def checkpoint_path(cfg: DemoConfig, paths: DemoPaths) -> Path:
    """The checkpoint the predict step uses."""
    return paths.model / ("run/checkpoints/best.ckpt" if will_train(cfg) else SHIPPED_CHECKPOINT)


def synth_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 1: a small synthetic longitudinal cohort."""
    values = {
        "n_patients": cfg.patients,
        "seed": cfg.seed,
        "shape": cfg.shape,
        "spacing_mm": cfg.spacing_mm,
        "max_studies": cfg.max_studies,
        "workers": cfg.workers,
    }
    argv = ("synth", "--patients", str(cfg.patients), "--seed", str(cfg.seed), "--shape",
            str(cfg.shape), "--spacing", str(cfg.spacing_mm), "--studies-max",
            str(cfg.max_studies), "--workers", str(cfg.workers), "--out", str(paths.data))  # fmt: skip
    return DemoStep(
        "synth",
        argv,
        lambda: generate_cohort(load_config(SynthConfig, values=values), paths.data),
    )


def validate_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 2: the dataset checks; an error stops the demo."""

    def run() -> None:
        report = validate_dataset(paths.data)
        if not report.ok:
            first = next(p for p in report.problems if p.is_error)
            raise DatasetError(
                f"{paths.data}: {report.n_errors} error(s) in the synthetic cohort, first: "
                f"{report.relative(first.file)}: {first.message}"
            )

    return DemoStep("validate", ("validate", str(paths.data)), run)


def preprocess_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 3: co-registration of every study to its patient's baseline."""

    def run() -> None:
        pcfg = load_config(PreprocessConfig, values={"spacing_mm": cfg.spacing_mm})
        report = preprocess_dataset(
            paths.data, paths.preprocessed, pcfg, cfg.workers, catalog_path=paths.catalog
        )
        if report.failed:
            o = report.failed[0]
            raise DatasetError(
                f"{len(report.failed)} studies failed to preprocess, first "
                f"{o.patient_id}/{o.study_id}: {o.message}"
            )

    argv = ("preprocess", "--data", str(paths.data), "--out", str(paths.preprocessed),
            "--workers", str(cfg.workers), "--catalog", str(paths.catalog), "--set",
            f"spacing_mm={cfg.spacing_mm}")  # fmt: skip
    return DemoStep("preprocess", argv, run)


def train_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 4 (with a budget): train a small STT within minutes or steps."""
    # no shipped checkpoint and no budget given: keep the demo within minutes
    minutes = cfg.train_minutes or (5.0 if cfg.train_steps <= 0 else 0.0)
    values: dict[str, object] = {"trainer.seed": cfg.seed}
    argv = ["train", "--config", str(demo_config_path()), "--data", str(paths.preprocessed),
            "--out", str(paths.model / "run"), "--seed", str(cfg.seed)]  # fmt: skip
    if minutes > 0:
        values["trainer.time_budget_min"] = minutes
        argv += ["--time-budget-min", str(minutes)]
    if cfg.train_steps > 0:
        values["trainer.max_steps"] = cfg.train_steps
        values["trainer.max_epochs"] = -1  # the step cap alone decides the length
        argv += ["--max-steps", str(cfg.train_steps)]

    def run() -> None:
        if not read_release(paths.preprocessed).split("val"):
            values["validation.enabled"] = False  # too few patients for a validation split
        train(
            load_train_config(demo_config_path(), values=values),
            paths.preprocessed,
            paths.model / "run",
        )

    return DemoStep("train", tuple(argv), run)


def model_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 4 (default): copy the shipped checkpoint and its provenance."""
    src = shipped_checkpoint()
    dst = checkpoint_path(cfg, paths)

    def run() -> None:
        if src is None:
            raise MetstrackError("no checkpoint is shipped with this installation")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        prov = src.with_name(SHIPPED_PROVENANCE)
        if prov.is_file():
            shutil.copyfile(prov, dst.with_name(SHIPPED_PROVENANCE))

    return DemoStep("model", (), run)


def predict_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 5: Segmentation-Through-Time over each patient's studies, on native grids."""
    request = PredictRequest(
        checkpoint=checkpoint_path(cfg, paths), data=paths.preprocessed, out=paths.predictions
    )

    def run() -> None:
        result = predict_dataset(request)
        if result.failed:
            first = next(p for p in result.patients if p.error is not None)
            raise DatasetError(
                f"{len(result.failed)} patient(s) failed to predict, first "
                f"{first.patient_id}: {first.error}"
            )

    argv = ("predict", "--checkpoint", str(request.checkpoint), "--data",
            str(paths.preprocessed), "--out", str(paths.predictions))  # fmt: skip
    return DemoStep("predict", argv, run)


def evaluate_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 6: lesion-wise and small-lesion metrics against the labels."""
    ecfg = EvaluationConfig(n_bootstrap=cfg.bootstrap, seed=cfg.seed)
    argv = ("evaluate", "--pred", str(paths.predictions), "--ref", str(paths.data), "--out",
            str(paths.evaluation), "--workers", str(cfg.workers), "--seed", str(cfg.seed),
            "--bootstrap", str(cfg.bootstrap))  # fmt: skip
    return DemoStep(
        "evaluate",
        argv,
        lambda: evaluate_predictions(
            paths.predictions, paths.data, paths.evaluation, ecfg, workers=cfg.workers
        ),
    )


def track_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 7: lesion identities through time, burden, rates and response."""
    argv = ("track", "--data", str(paths.data), "--masks", str(paths.predictions),
            "--transforms", str(paths.preprocessed), "--out", str(paths.tracking))  # fmt: skip
    return DemoStep(
        "track",
        argv,
        lambda: track_dataset(
            paths.data,
            paths.tracking,
            MaskSource("predictions", paths.predictions),
            transforms=paths.preprocessed,
        ),
    )


def tracked_survival_reason(paths: DemoPaths) -> str | None:
    """Why the imaging cohort is too small for a Cox fit on its tracked burden (None: it is not)."""
    patients, _, _ = read_clinical_tables(paths.data)
    deaths = int(sum(bool(p.death) for p in patients))
    if deaths < MIN_DEATHS_FOR_COX:
        return (
            f"the imaging cohort has {len(patients)} patients and {deaths} deaths, too few for a "
            f"Cox fit on its tracked burden (at least {MIN_DEATHS_FOR_COX} deaths); the survival "
            "section is a separate clinical cohort"
        )
    return None


def tracked_survival_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 8: Cox on the burden the demo tracked, or one line saying the cohort is too small."""
    argv = ("survival", "--data", str(paths.data), "--tracking", str(paths.tracking), "--out",
            str(paths.survival_tracked), "--covariates", PRIMARY, "--no-time-varying")  # fmt: skip
    scfg = load_config(SurvivalConfig, values={"covariates": [PRIMARY], "time_varying": False})

    def run() -> None:
        reason = tracked_survival_reason(paths)
        if reason is not None:
            log.info("survival on the tracked burden: %s", reason)
            write_json_atomic(paths.survival_tracked / NOT_FITTED, {"reason": reason})
            return
        survival_from_dataset(paths.data, paths.survival_tracked, scfg, tracking=paths.tracking)

    return DemoStep("survival (tracked burden)", argv, run)


def report_survival(paths: DemoPaths) -> Path:
    """The survival folder the report shows: the tracked-burden fit when there is one."""
    if (paths.survival_tracked / "summary.json").is_file():
        return paths.survival_tracked
    return paths.survival


def clinical_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 8a: a clinical-only cohort of the published size for the survival analysis."""
    argv = ("synth", "--clinical-only", "--patients", str(cfg.clinical_patients), "--seed",
            str(cfg.seed), "--out", str(paths.clinical))  # fmt: skip

    def run() -> None:
        scfg = load_config(
            SynthConfig, values={"n_patients": cfg.clinical_patients, "seed": cfg.seed}
        )
        write_clinical_only(
            generate_clinical_only(scfg.n_patients, scfg.seed, config=scfg), paths.clinical
        )

    return DemoStep("clinical cohort", argv, run)


def survival_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 8b: Cox and Kaplan-Meier on the clinical cohort's burden dynamics."""
    argv = ("survival", "--data", str(paths.clinical), "--out", str(paths.survival),
            "--landmark-days", "90")  # fmt: skip
    scfg = load_config(SurvivalConfig, values={"landmark_days": 90.0})
    return DemoStep(
        "survival", argv, lambda: survival_from_dataset(paths.clinical, paths.survival, scfg)
    )


def report_step(cfg: DemoConfig, paths: DemoPaths) -> DemoStep:
    """Step 10: the HTML report (its survival section names the cohort it comes from)."""

    def argv() -> tuple[str, ...]:
        return ("report", "--data", str(paths.data), "--predictions", str(paths.predictions),
                "--evaluation", str(paths.evaluation), "--tracking", str(paths.tracking),
                "--survival", str(report_survival(paths)), "--out", str(paths.report),
                "--title", REPORT_TITLE)  # fmt: skip

    def run() -> None:
        inputs = ReportInputs(
            paths.data, paths.predictions, paths.evaluation, paths.tracking,
            report_survival(paths), REPORT_TITLE,
        )  # fmt: skip
        cohort = read_dataset(paths.data)
        build_report(
            inputs, paths.report, cohort=cohort, patients=[p.patient_id for p in cohort.patients]
        )

    return DemoStep("report", argv(), run, argv_when_run=argv)


def demo_steps(cfg: DemoConfig, paths: DemoPaths) -> list[DemoStep]:
    """Every step of the demo, in order."""
    model = train_step if will_train(cfg) else model_step
    return [
        step(cfg, paths)
        for step in (
            synth_step,
            validate_step,
            preprocess_step,
            model,
            predict_step,
            evaluate_step,
            track_step,
            tracked_survival_step,
            clinical_step,
            survival_step,
            report_step,
        )
    ]
