"""Per-patient timeline figure: each lesion's volume over time.

One line per lesion ID (volume in mm3 against months from baseline, absent
studies drawn at 0), lesions first seen after baseline drawn thicker in red
with a star at their first appearance, splits and merges annotated, and
treatment events (radiosurgery, ``visit_class`` 2 of the clinical event table)
as dashed vertical lines. The volume axis turns logarithmic (symlog, linear
below 1 mm3) when volumes span more than a factor of 100. Rendered with matplotlib's Agg backend (no display).

:func:`timeline_figure` only draws; :func:`metstrack.io.figures.plot_timeline` writes
the PNG and SVG files.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from metstrack.types import DAYS_PER_MONTH  # noqa: E402


def timeline_figure(
    trajectories: pd.DataFrame,
    *,
    treatment_days: Sequence[float] = (),
    title: str | None = None,
) -> Figure:
    """Draw one patient's lesion volumes over time (no file is written).

    Args:
        trajectories: Trajectory rows of ONE patient
            (:mod:`metstrack.tracking.trajectory` columns).
        treatment_days: Days from baseline of treatments (radiosurgery),
            drawn as dashed vertical lines.
        title: Figure title (default: the patient ID).

    Returns:
        The matplotlib figure (save it with :func:`metstrack.io.figures.save_figure`,
        which also closes it).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    try:
        pid = str(trajectories["patient_id"].iloc[0]) if len(trajectories) else "patient"
        cmap = plt.get_cmap("tab10")
        for k, (lid, g) in enumerate(trajectories.groupby("lesion_id", sort=True)):
            g = g.sort_values("study_index")
            months = g["days_from_baseline"] / DAYS_PER_MONTH
            first = g.iloc[0]
            is_new = int(first["study_index"]) > 0 and first["status"] == "new"
            style = (
                {"color": "tab:red", "lw": 2.4} if is_new else {"color": cmap(k % 10), "lw": 1.3}
            )
            ax.plot(months, g["volume_mm3"], marker="o", ms=3.5, label=f"L{lid}", **style)
            if is_new:
                ax.plot(months.iloc[0], first["volume_mm3"], marker="*", ms=13, color="tab:red")
            for _, r in g[g["event"].astype(str) != ""].iterrows():
                ax.annotate(
                    str(r["event"]),
                    (r["days_from_baseline"] / DAYS_PER_MONTH, r["volume_mm3"]),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=7,
                )
        for i, d in enumerate(treatment_days):
            ax.axvline(
                d / DAYS_PER_MONTH,
                color="black",
                ls="--",
                lw=1.0,
                label="radiosurgery" if i == 0 else None,
            )
        vols = trajectories["volume_mm3"].to_numpy(dtype=float) if len(trajectories) else []
        pos = [v for v in vols if v > 0]
        if pos and max(pos) / min(pos) > 100:  # sub-10 mm3 next to cm3 lesions: log-like axis
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0.0)  # volumes are never negative: no negative symlog ticks
        ax.set_xlabel("months from baseline")
        ax.set_ylabel("lesion volume (mm$^3$)")
        ax.set_title(title or f"{pid}: lesion volumes (red = new after baseline)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(
                fontsize=7,
                ncol=2 if len(handles) > 8 else 1,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                frameon=False,
            )
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig
