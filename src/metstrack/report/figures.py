"""Pictures for the report: axial lesion strips with contours, small lesions zoomed.

Display convention: axial slices (constant Z of the RAS+ array) shown in the
radiological convention (patient's right on the viewer's left, anterior up).
Predicted contours are drawn in solid orange, reference contours in dashed cyan
(on top, so both stay visible where they agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metstrack.core.atomic import atomic_path

PRED_COLOR = "#ff7f0e"
REF_COLOR = "#17becf"
#: Lesions below this volume get a zoomed panel (the clinically missed ones).
SMALL_LESION_MM3 = 100.0


@dataclass(frozen=True)
class StripLesion:
    """A lesion to show: where, how big, and its name in the report.

    Attributes:
        name: Label printed on the panel (e.g. ``"L3"``).
        centroid_voxel: (X, Y, Z) voxel centroid on the displayed grid.
        volume_mm3: Lesion volume.
        source: ``"pred"``, ``"ref"`` or ``"both"``.
    """

    name: str
    centroid_voxel: tuple[float, float, float]
    volume_mm3: float
    source: str


def _window(img: np.ndarray) -> tuple[float, float]:
    fg = img[img > 0]
    if fg.size == 0:
        return float(img.min()), float(img.max() or 1.0)
    lo, hi = np.percentile(fg, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _axial(a: np.ndarray, z: int) -> np.ndarray:
    """Slice ``z`` of an (X, Y, Z) array as a displayable (rows=Y up, cols=X flipped) image."""
    return a[::-1, :, z].T


def lesion_strip(
    image: np.ndarray,
    spacing_mm: Sequence[float],
    lesions: Sequence[StripLesion],
    out_png: str | Path,
    *,
    pred: np.ndarray | None = None,
    ref: np.ndarray | None = None,
    title: str = "",
    zoom_mm: float = 24.0,
    max_panels: int = 12,
) -> Path:
    """Draw one study's strip: an axial slice through every lesion, small ones zoomed.

    Args:
        image: (X, Y, Z) float image (e.g. T1 post-contrast), RAS+ grid.
        spacing_mm: Voxel spacing (X, Y, Z) in mm (sets the aspect ratio).
        lesions: Lesions to show, largest first is fine; at most ``max_panels``.
        out_png: Target PNG (written atomically).
        pred: (X, Y, Z) binary predicted mask on the same grid, or None.
        ref: (X, Y, Z) binary reference mask on the same grid, or None.
        title: Figure title.
        zoom_mm: Side of the zoomed crop for small lesions, in mm.
        max_panels: Maximum number of lesion panels.

    Returns:
        ``out_png``. A study without lesions gets one mid-brain slice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = _window(image)
    sx, sy, _ = (float(s) for s in spacing_mm)
    shown = list(lesions)[:max_panels]
    panels: list[tuple[int, StripLesion | None, bool]] = []
    if not shown:
        panels.append((image.shape[2] // 2, None, False))
    for les in shown:
        z = int(round(les.centroid_voxel[2]))
        panels.append((z, les, False))
        if les.volume_mm3 < SMALL_LESION_MM3:
            panels.append((z, les, True))
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.6), squeeze=False)
    for ax, (z, les, zoom) in zip(axes[0], panels, strict=True):
        z = int(np.clip(z, 0, image.shape[2] - 1))
        sl = _axial(image, z)
        extent = None
        ax.imshow(
            sl,
            cmap="gray",
            vmin=lo,
            vmax=hi,
            origin="lower",
            aspect=sy / sx,
            interpolation="nearest",
        )
        for mask, color in ((ref, REF_COLOR), (pred, PRED_COLOR)):
            if mask is not None and np.any(mask[:, :, z]):
                ax.contour(
                    _axial(mask.astype(np.float32), z),
                    levels=[0.5],
                    colors=[color],
                    linewidths=1.2 if zoom else 0.8,
                    origin="lower",
                )
        if les is not None:
            # column of the flipped slice: X index reversed
            cx = image.shape[0] - 1 - les.centroid_voxel[0]
            cy = les.centroid_voxel[1]
            if zoom:
                hx, hy = zoom_mm / 2 / sx, zoom_mm / 2 / sy
                ax.set_xlim(cx - hx, cx + hx)
                ax.set_ylim(cy - hy, cy + hy)
                ax.set_title(f"{les.name} zoom ({les.volume_mm3:.1f} mm³)", fontsize=7)
            else:
                ax.add_patch(
                    plt.Circle(
                        (cx, cy),
                        radius=max(6.0, 2.5 * (les.volume_mm3 ** (1 / 3)) / sx),
                        fill=False,
                        color="yellow",
                        lw=0.6,
                        ls="--",
                    )
                )
                ax.set_title(f"{les.name} z={z} ({les.volume_mm3:.0f} mm³)", fontsize=7)
        else:
            ax.set_title(f"z={z} (no lesion)", fontsize=7)
        del extent
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.5, "R", color="white", fontsize=6, transform=ax.transAxes, va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out
