"""``metstrack track``: lesion identities, trajectories, burden, rates and response."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import (
    ExecutorOption,
    SchedulerOption,
    TaskMemoryOption,
    console,
    executor_from_options,
    guarded,
    progress,
    usage_error,
)


def track(
    data: Annotated[
        Path, typer.Option("--data", help="Dataset root in the release layout.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.", show_default=False)],
    masks: Annotated[
        Path | None,
        typer.Option("--masks", help="Predictions root (<DIR>/predictions/patientId/...)."),
    ] = None,
    labels: Annotated[
        bool, typer.Option("--labels", help="Track the dataset's own RTSTRUCT_segmentation labels.")
    ] = False,
    ground_truth: Annotated[
        bool,
        typer.Option(
            "--ground-truth",
            help="Track the synthetic ground truth (<data>/ground_truth/instances; its "
            "transforms.csv is used unless --transforms is given).",
        ),
    ] = False,
    transforms: Annotated[
        Path | None,
        typer.Option(
            "--transforms",
            help="Per-study baseline_to_study transforms: a CSV (PatientID, StudyID, m00..m33) "
            "or a folder written by `metstrack preprocess` (transforms/<P>/<S>.json); masks "
            "are then mapped to each patient's baseline grid first.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of tracking settings.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. matching.max_distance_mm=12."),
    ] = None,
    patient: Annotated[
        list[str] | None, typer.Option("--patient", help="Only this PatientID (repeatable).")
    ] = None,
    figures: Annotated[bool, typer.Option(help="Write timeline figures.")] = True,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Dask LocalCluster workers (--executor dask).")
    ] = 1,
    executor: ExecutorOption = "local",
    scheduler: SchedulerOption = None,
    task_memory: TaskMemoryOption = None,
) -> None:
    """Track lesions through time and write trajectories, burden, rates and response."""
    chosen = [
        n
        for n, on in (
            ("--masks", masks is not None),
            ("--labels", labels),
            ("--ground-truth", ground_truth),
        )
        if on
    ]
    if len(chosen) != 1:
        usage_error(
            "give exactly one mask source: --masks DIR, --labels or "
            f"--ground-truth (got {', '.join(chosen) or 'none'})"
        )
    with guarded():
        from metstrack.config import load_config
        from metstrack.io.release import read_release
        from metstrack.io.tracks import MaskSource
        from metstrack.tracking.config import TrackConfig
        from metstrack.workflows.track import track_dataset

        cfg = load_config(TrackConfig, config, set_ or [])
        if masks is not None:
            source = MaskSource("predictions", masks)
        elif labels:
            source = MaskSource("labels")
        else:
            source = MaskSource("ground-truth", data)
        ids = tuple(patient or ())
        n = len(ids) if ids else len(read_release(data).patients)
        with (
            executor_from_options(executor, workers, scheduler, task_memory) as pool,
            progress() as bar,
        ):
            task = bar.add_task("tracking", total=n)
            result = track_dataset(
                data,
                out,
                source,
                config=cfg,
                transforms=transforms,
                patients=ids,
                figures=figures,
                on_patient=lambda _pid: bar.advance(task),
                executor=pool,
            )
    _summary(result, out)


def _summary(result, out: Path) -> None:
    rates = result.rates.set_index("patient_id") if len(result.rates) else None
    table = Table(title="lesion tracking")
    for col in ("patient", "studies", "lesions", "new", "events", "cm3/month", "last response"):
        table.add_column(col, justify="left" if col == "patient" else "right")
    for res in result.results:
        traj = res.trajectories
        new = int(((traj["status"] == "new") & (traj["study_index"] > 0)).sum())
        rate = "undefined"
        if rates is not None and res.patient_id in rates.index:
            r = rates.loc[res.patient_id]
            rate = f"{r['rate_volume_cm3_per_month']:+.3f}" if bool(r["defined"]) else "undefined"
        resp = result.response[result.response["patient_id"] == res.patient_id]
        last = "-" if resp.empty else f"{resp.iloc[-1]['rano_bm']} / {resp.iloc[-1]['volumetric']}"
        table.add_row(
            res.patient_id,
            str(len(res.study_ids)),
            str(res.n_lesions),
            str(new),
            str(len(res.events)),
            rate,
            last,
        )
    console.print(table)
    if result.skipped:
        console.print(f"{len(result.skipped)} studies skipped (no mask); see track_config.json")
    console.print(f"wrote {out} (trajectories.csv, burden.csv, rates.csv, response.csv)")
