"""``metstrack survival``: Cox, landmark and time-varying fits and Kaplan-Meier curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from metstrack.cli.common import console, guarded
from metstrack.config import load_config
from metstrack.survival.config import SurvivalConfig


def survival(
    data: Annotated[
        Path, typer.Option("--data", help="Dataset root with tables/ (clinical tables).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    tracking: Annotated[
        Path | None, typer.Option("--tracking", help="Output folder of `metstrack track`.")
    ] = None,
    burden: Annotated[Path | None, typer.Option("--burden", help="A burden CSV instead.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings.")] = None,
    origin: Annotated[str | None, typer.Option(help="first_srs or first_scan.")] = None,
    landmark_days: Annotated[float | None, typer.Option(help="Also fit a landmark model.")] = None,
    groups: Annotated[str | None, typer.Option(help="KM groups: median or tertiles.")] = None,
    penalizer: Annotated[float | None, typer.Option(help="L2 penalizer of the Cox fit.")] = None,
    covariates: Annotated[
        str | None, typer.Option(help="Comma-separated covariates (see docs/survival.md).")
    ] = None,
    impute: Annotated[str | None, typer.Option(help="none or median.")] = None,
    time_varying: Annotated[
        bool | None, typer.Option("--time-varying/--no-time-varying", help="Time-varying fit.")
    ] = None,
    allow_missing_imaging: Annotated[
        bool,
        typer.Option(
            "--allow-missing-imaging",
            help="Drop clinical patients without burden rows (named) instead of refusing.",
        ),
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")
    ] = None,
) -> None:
    """Fit survival models of the burden rate of change and write tables and curves."""
    with guarded():
        values = {
            "origin": origin,
            "landmark_days": landmark_days,
            "groups": groups,
            "penalizer": penalizer,
            "impute": impute,
            "covariates": [c.strip() for c in covariates.split(",") if c.strip()]
            if covariates
            else None,
            "allow_missing_imaging": True if allow_missing_imaging else None,
            "time_varying": time_varying,
        }
        cfg = load_config(SurvivalConfig, config, list(set_ or []), values=values)
        from metstrack.workflows.survival import survival_from_dataset  # lazy: lifelines

        res = survival_from_dataset(data, out, cfg, burden=burden, tracking=tracking)
    _render(res)


def _render(res) -> None:
    t = res.table
    table = Table(
        title=f"Cox model: {res.cox.n_patients_} patients, {res.cox.n_events_} deaths "
        f"(origin {t.origin})"
    )
    table.add_column("covariate", no_wrap=True)
    for col in ("HR (95% CI)", "p", "HR per SD"):
        table.add_column(col, no_wrap=True)
    for _, r in res.cox.summary_.iterrows():
        table.add_row(
            escape(r["covariate"]),
            f"{r['hr']:.3f} ({r['hr_lower_95']:.3f}-{r['hr_upper_95']:.3f})",
            f"{r['p']:.3g}",
            f"{r['hr_per_sd']:.3f}",
        )
    console.print(table)
    for _, r in res.cox.summary_.iterrows():
        console.print(escape(f"  {r['covariate']}: HR {r['unit']}"), soft_wrap=True)
    console.print(
        f"concordance {res.cox.concordance_:.3f}; likelihood-ratio p = {res.cox.lr_test_['p']:.3g}"
    )
    if res.km is not None:
        console.print(f"Kaplan-Meier log-rank p = {res.km.logrank_p:.3g}")
    if t.dropped:
        console.print("dropped: " + ", ".join(f"{k}: {v}" for k, v in t.dropped.items()))
    for n in (*t.notes, *res.cox.notes_):
        console.print(f"[yellow]note:[/] {escape(n)}")
    console.print(f"outputs in {res.files['summary'].parent}")
