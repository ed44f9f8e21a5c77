"""``metstrack ablate``: train and compare named variants of a base config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, usage_error
from metstrack.cli.pretrain import _quiet_lightning
from metstrack.errors import ConfigError


def ablate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Base training TOML.")],
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Dataset in the release layout, co-registered.")
    ] = Path("."),
    out: Annotated[Path, typer.Option("--out", "-o", help="Ablation folder (created).")] = Path(
        "ablation"
    ),
    variants: Annotated[
        str,
        typer.Option(
            "--variants",
            help="Comma-separated: no-memory, prior-mask, no-prior-mask, pretrain, no-pretrain, "
            "seq-1, drop-T1, drop-each ... (base is always run).",
        ),
    ] = "no-memory",
    pretrained: Annotated[
        Path | None,
        typer.Option("--pretrained", help="Weights of the 'pretrain' variant (else pretrained)."),
    ] = None,
    eval_split: Annotated[
        str, typer.Option("--eval-split", help="Split evaluated (falls back to val).")
    ] = "test",
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Patient bootstrap resamples.", min=0)
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a base setting, e.g. --set trainer.max_steps=200."),
    ] = None,
) -> None:
    """Train every variant with the base budget and seed; write ablation.csv and ablation.md.

    Differences to the base variant carry paired patient-bootstrap confidence
    intervals. See docs/ablate.md.
    """
    from metstrack.train.ablate import ablate as run_ablate
    from metstrack.train.ablate import expand_variants
    from metstrack.train.config import load_train_config

    _quiet_lightning()
    names = [v.strip() for v in variants.split(",") if v.strip()]
    try:
        base = load_train_config(config, list(set_ or []))
        expand_variants(names, base)
    except ConfigError as exc:
        usage_error(exc)
    with guarded():
        try:
            result = run_ablate(
                base,
                data,
                out,
                variants=names,
                pretrained=pretrained,
                eval_split=eval_split,
                n_bootstrap=bootstrap,
                seed=seed,
            )
        except ConfigError as exc:
            usage_error(exc)
    t = result.table
    table = Table(
        title=f"metstrack ablate: {result.n_patients} patients, {result.n_studies} studies"
    )
    table.add_column("variant")
    metrics = list(dict.fromkeys(t["metric"]))
    for m in metrics:
        table.add_column(m, justify="right")
    for variant, grp in t.groupby("variant", sort=False):
        g = grp.set_index("metric")
        cells = []
        for m in metrics:
            r = g.loc[m]
            cell = f"{r['value']:.3f}"
            if variant != "base":
                cell += f" ({r['diff']:+.3f})"
            cells.append(cell)
        table.add_row(str(variant), *cells)
    console.print(table)
    console.print(f"table: {result.csv} and {result.markdown}")
