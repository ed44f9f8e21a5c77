"""``metstrack demo``: the main job on a fresh machine (synthetic cohort, no network)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from metstrack.cli.common import console, guarded


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "metstrack-demo"
    ),
    patients: Annotated[int, typer.Option(min=1, help="Imaging patients.")] = 4,
    shape: Annotated[int, typer.Option(help="Grid edge (voxels), multiple of 16.")] = 128,
    spacing: Annotated[
        float,
        typer.Option(
            min=0.2,
            max=5.0,
            help="Voxel size in mm of the cohort and of preprocessing (the shipped model "
            "was trained at 1.5 mm on full-size heads).",
        ),
    ] = 1.5,
    max_studies: Annotated[int, typer.Option(min=1, help="Most studies per patient.")] = 4,
    clinical_patients: Annotated[int, typer.Option(min=20, help="Survival cohort size.")] = 1429,
    seed: Annotated[int, typer.Option(min=0, help="Seed of every step.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    train_minutes: Annotated[
        float,
        typer.Option(
            min=0.0, help="Train a small STT for this long instead of using the shipped checkpoint."
        ),
    ] = 0.0,
    train_steps: Annotated[
        int, typer.Option(min=0, help="Cap training steps (with training).")
    ] = 0,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the CIs.")] = 1000,
) -> None:
    """Synthesise, preprocess, segment, evaluate, track, analyse survival and report, end to end."""
    from metstrack.demo.run import run_demo
    from metstrack.demo.steps import DemoConfig

    if logging.getLogger().level > logging.DEBUG:
        # Lightning logs its own INFO banners through a separate handler (see `train`).
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if shape % 16:
        raise typer.BadParameter(f"must be a multiple of 16, got {shape}", param_hint="--shape")
    cfg = DemoConfig(
        out=out,
        patients=patients,
        shape=shape,
        spacing_mm=spacing,
        max_studies=max_studies,
        clinical_patients=clinical_patients,
        seed=seed,
        workers=workers,
        train_minutes=train_minutes,
        train_steps=train_steps,
        bootstrap=bootstrap,
    )

    def announce(i: int, n: int, name: str, command: str) -> None:
        console.rule(f"[bold]step {i}/{n}: {name}")
        console.print(f"[dim]$ {command}[/]", soft_wrap=True)

    with guarded():
        res = run_demo(cfg, announce=announce)
    h = res.headline
    t = Table(show_header=False, box=None)
    for label, key, f in (
        ("lesion F1", "lesion_f1", "{:.3f}"),
        ("sensitivity, lesions < 10 mm3", "sensitivity_lt_10mm3", "{:.3f}"),
        ("sensitivity, all lesions", "lesion_sensitivity", "{:.3f}"),
        ("false positives per scan", "fp_per_scan", "{:.2f}"),
        ("voxel Dice", "voxel_dice", "{:.3f}"),
        ("tracked lesion identities", "tracked_lesions", "{:.0f}"),
    ):
        if key in h:
            t.add_row(label, "n/a (undefined)" if h[key] is None else f.format(h[key]))
    if "tracked_hr_per_cm3_month" in h:
        t.add_row(
            f"HR per cm3/month, tracked burden ({int(h['tracked_survival_patients'])})",
            f"{h['tracked_hr_per_cm3_month']:.2f} (95% CI {h['tracked_hr_lower_95']:.2f}-"
            f"{h['tracked_hr_upper_95']:.2f})",
        )
    if "hr_per_cm3_month" in h:
        t.add_row(
            f"HR per cm3/month, clinical cohort ({int(h['survival_patients'])})",
            f"{h['hr_per_cm3_month']:.2f} (95% CI {h['hr_lower_95']:.2f}-{h['hr_upper_95']:.2f}); planted 1.27",
        )
    total = sum(s for _, s, _ in res.steps)
    t.add_row("time", f"{total / 60:.1f} min")
    console.print(Panel(t, title="metstrack demo: done", subtitle=f"report: {res.report}"))
    if "tracked_survival" in h:
        console.print(f"Survival on the tracked burden: {h['tracked_survival']}.", soft_wrap=True)
    console.print(f"Open the report: {res.report.resolve()}")
