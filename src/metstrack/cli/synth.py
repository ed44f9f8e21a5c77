"""``metstrack synth``: generate a synthetic NYUMets-style longitudinal cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import (
    console,
    guarded,
    progress,
    usage_error,
)
from metstrack.core import schema
from metstrack.errors import ConfigError


def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    patients: Annotated[
        int | None, typer.Option("--patients", "-n", help="Number of patients.", min=1)
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Master seed.", min=0)] = None,
    shape: Annotated[
        int | None, typer.Option("--shape", help="Grid edge K (K^3 voxels), 32..256.")
    ] = None,
    spacing: Annotated[
        float | None,
        typer.Option(
            "--spacing",
            help="Baseline voxel size in mm (the head fills 192 mm: --shape 96 --spacing 2 "
            "is a full-size head at 2 mm).",
        ),
    ] = None,
    anatomy: Annotated[
        str | None,
        typer.Option("--anatomy", help="template (MNI brain, default) or phantom (tiny tests)."),
    ] = None,
    contrast: Annotated[
        str | None,
        typer.Option(
            "--contrast", help="clinical (default), randomized (domain randomisation) or mixed."
        ),
    ] = None,
    acquisition: Annotated[
        str | None,
        typer.Option(
            "--acquisition",
            help="clinical (default: follow-ups on their own oblique, thick-slice grids) or "
            "fixed (every study on the baseline grid, as after preprocessing).",
        ),
    ] = None,
    skull: Annotated[
        str | None,
        typer.Option("--skull", help="on (default), stripped (zero background) or mixed."),
    ] = None,
    studies_min: Annotated[
        int | None, typer.Option("--studies-min", help="Fewest studies per patient (>= 2).")
    ] = None,
    studies_max: Annotated[
        int | None, typer.Option("--studies-max", help="Most studies per patient.")
    ] = None,
    no_motion: Annotated[
        bool,
        typer.Option(
            "--no-motion",
            help="Follow-ups aligned with the baseline, on its grid (implies --acquisition fixed).",
        ),
    ] = False,
    clinical_only: Annotated[
        bool,
        typer.Option("--clinical-only", help="Clinical tables and burden only, no images."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Also replace a dataset in --out that synth did not write "
            "(a previous synthetic cohort is always replaced).",
        ),
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Parallel processes.", min=1)
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file of SynthConfig settings.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set hazard_ratio=1.5."),
    ] = None,
) -> None:
    """Generate a synthetic cohort in the NYUMets-Brain release layout, with ground truth.

    Example: metstrack synth --patients 4 --seed 0 --shape 64 --out cohort
    """
    from metstrack.config import load_config
    from metstrack.synth.clinical import generate_clinical_only
    from metstrack.synth.config import SynthConfig
    from metstrack.workflows.synth import generate_cohort, write_clinical_only

    with guarded():
        values: dict[str, object] = {
            "n_patients": patients,
            "seed": seed,
            "shape": shape,
            "spacing_mm": spacing,
            "anatomy": anatomy,
            "contrast": contrast,
            "acquisition": acquisition,
            "skull": skull,
            "min_studies": studies_min,
            "max_studies": studies_max,
            "workers": workers,
        }
        if no_motion:
            if acquisition not in (None, "fixed"):
                usage_error("--no-motion puts every study on the baseline grid; drop --acquisition")
            values.update(motion_max_deg=0.0, motion_max_mm=0.0, acquisition="fixed")
        try:
            cfg = load_config(SynthConfig, config, list(set_ or []), values=values)
        except ConfigError as exc:
            usage_error(exc)
        if clinical_only:
            cohort = generate_clinical_only(cfg.n_patients, cfg.seed, config=cfg)
            write_clinical_only(cohort, out, overwrite=overwrite)
        else:
            with progress() as bar:
                task = bar.add_task("synthesising patients", total=cfg.n_patients)
                generate_cohort(
                    cfg, out, overwrite=overwrite, on_patient=lambda _pid: bar.advance(task)
                )
        _print_summary(out, clinical_only)


def _print_summary(out: Path, clinical_only: bool) -> None:
    import pandas as pd  # lazy: the command's start-up

    imaging = pd.read_csv(schema.table_path(out, schema.IMAGING_TABLE))
    patients = pd.read_csv(schema.table_path(out, schema.PATIENTS_TABLE))
    traj = pd.read_csv(out / schema.GROUND_TRUTH_DIR / "lesion_trajectories.csv")
    present = traj[traj["volume_mm3"] > 0]
    per_patient = imaging.groupby("PatientID").size()
    table = Table(title=f"synthetic cohort in {out}", show_header=False)
    table.add_row("mode", "clinical-only" if clinical_only else "imaging")
    table.add_row("patients", str(len(patients)))
    table.add_row(
        "studies", f"{len(imaging)} ({per_patient.min()}-{per_patient.max()} per patient)"
    )
    table.add_row("labelled (flagged) studies", str(int(imaging["RTSTRUCT_segmentation"].sum())))
    table.add_row("lesions", str(len(traj.drop_duplicates(["PatientID", "lesion_id"]))))
    if len(present):
        table.add_row("lesion observations < 10 mm3", f"{(present['volume_mm3'] < 10).mean():.0%}")
    table.add_row("deaths", f"{int(patients['death'].sum())} of {len(patients)}")
    console.print(table)
