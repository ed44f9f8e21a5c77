"""``metstrack demo``: the whole pipeline on a fresh machine, no data, no network.

Steps (each one is a library workflow; the equivalent metstrack command is
printed before it runs, so any step can be rerun alone):

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
8. ``survival --tracking``  Cox on the burden the demo measured and tracked,
                   when the imaging cohort has enough deaths for a fit
                   (:data:`MIN_DEATHS_FOR_COX`); otherwise one line says so
9. ``synth --clinical-only`` + ``survival``  Cox and Kaplan-Meier on a
                   synthetic clinical cohort of the published size (1,429),
                   shown in the report as a separate, labelled cohort
10. ``report``     the HTML report

Every output lands under one folder and every step is registered in the
cohort catalog ``<out>/catalog.sqlite``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from metstrack.catalog import Catalog, OutputRecord, PredictionRecord, TrackRecord
from metstrack.core import schema
from metstrack.core.atomic import write_json_atomic
from metstrack.demo.steps import (
    NOT_FITTED,
    DemoConfig,
    DemoPaths,
    DemoStep,
    checkpoint_path,
    demo_steps,
)
from metstrack.errors import MetstrackError
from metstrack.io.release import read_release

log = logging.getLogger(__name__)


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
    paths = DemoPaths.under(Path(cfg.out))
    paths.out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out=paths.out, report=paths.report / "index.html")
    steps = demo_steps(cfg, paths)
    catalog = Catalog.open(paths.catalog)
    try:
        for i, step in enumerate(steps, start=1):
            command = (
                step.command
                if step.argv
                else (f"copy the shipped checkpoint to {checkpoint_path(cfg, paths)}")
            )
            if announce:
                announce(i, len(steps), step.name, command)
            t0 = time.perf_counter()
            _run_step(step)
            result.steps.append((step.name, time.perf_counter() - t0, command))
            register_step(catalog, step, paths)
    finally:
        catalog.close()
    result.headline = _headline(paths)
    write_json_atomic(
        paths.out / "demo_summary.json",
        {
            "headline": result.headline,
            "report": str(result.report),
            "steps": [{"name": n, "seconds": s, "command": c} for n, s, c in result.steps],
            "config": {k: str(v) for k, v in cfg.__dict__.items()},
        },
    )
    return result


def _run_step(step: DemoStep) -> None:
    """Run one step; a failure names the step's equivalent command."""
    try:
        step.run()
    except MetstrackError as exc:
        raise MetstrackError(f"step `{step.command}`: {exc}") from exc


def register_step(catalog: Catalog, step: DemoStep, paths: DemoPaths) -> None:
    """Register a finished step's outputs in the catalog (one transaction per call)."""
    folder = {
        "synth": paths.data,
        "validate": None,
        "preprocess": None,
        "train": paths.model,
        "model": paths.model,
        "predict": paths.predictions,
        "evaluate": paths.evaluation,
        "track": paths.tracking,
        "survival (tracked burden)": paths.survival_tracked,
        "clinical cohort": paths.clinical,
        "survival": paths.survival,
        "report": paths.report,
    }[step.name]
    if step.name == "synth":
        catalog.register_dataset(read_release(paths.data))
    if folder is None:  # validate writes nothing; preprocess registers itself
        return
    kind = re.sub(r"[^a-z0-9]+", "-", step.name.lower()).strip("-")
    run_id = catalog.begin_run(
        kind, {"argv": list(step.argv)}, source=str(paths.data), output=str(folder)
    )
    catalog.add_outputs(run_id, [OutputRecord(p) for p in _files(folder)])
    if step.name == "predict":
        rows = []
        for pdir in sorted((folder / schema.PREDICTIONS_DIR / "patientId").glob("*/studyId/*")):
            mask = next(iter(sorted(pdir.glob(f"{schema.PREDICTION_MASK}.nii*"))), None)
            prob = next(iter(sorted(pdir.glob(f"{schema.PREDICTION_PROB}.nii*"))), None)
            if mask is not None:
                rows.append(
                    PredictionRecord(pdir.name, str(mask), None if prob is None else str(prob))
                )
        catalog.add_predictions(run_id, rows)
    if step.name == "track":
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


def _headline(paths: DemoPaths) -> dict[str, float | str]:
    h: dict[str, float | str] = {}
    ev = paths.evaluation / "summary.json"
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
    tr = paths.tracking / "trajectories.csv"
    if tr.is_file():
        t = pd.read_csv(tr)
        h["tracked_lesions"] = float(t[["patient_id", "lesion_id"]].drop_duplicates().shape[0])
    tracked = paths.survival_tracked
    if (tracked / "summary.json").is_file():
        s = json.loads((tracked / "summary.json").read_text())["headline"]
        h.update(
            {
                "tracked_hr_per_cm3_month": s["hr_rate_volume_per_cm3_month"],
                "tracked_hr_lower_95": s["hr_lower_95"],
                "tracked_hr_upper_95": s["hr_upper_95"],
                "tracked_survival_patients": s["n_patients"],
            }
        )
    elif (tracked / NOT_FITTED).is_file():
        h["tracked_survival"] = json.loads((tracked / NOT_FITTED).read_text())["reason"]
    sv = paths.survival / "summary.json"
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
