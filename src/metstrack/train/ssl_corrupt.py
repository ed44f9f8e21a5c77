"""Models-Genesis corruptions of a 3D multi-contrast patch (the restoration pretext task).

Zhou et al., "Models Genesis" (MICCAI 2019; Medical Image Analysis 2021): the
network sees a corrupted patch and must restore the original. Four
corruptions, each drawn independently per study with its own probability:

* **non-linear intensity transform** (``nonlinear_prob``): every channel is
  rescaled to [0, 1] inside the patch, mapped through a random monotone cubic
  Bezier curve (end points (0, 0) and (1, 1), two random control points;
  decreasing half the time) and scaled back; restoring it teaches the network
  absolute intensity and contrast, which carry tissue identity in MRI.
* **local pixel shuffling** (``shuffle_prob``): ``shuffle_blocks`` small boxes
  (edge at most ``shuffle_block_frac`` of the patch) have their voxels
  permuted; restoring them teaches local texture and boundaries.
* **in-painting** / **out-painting** (``paint_prob``, in-painting with
  probability ``inpaint_fraction``, else out-painting): up to ``paint_boxes``
  boxes (edges 1/6 to 1/3 of the patch) are replaced by uniform noise (in),
  or everything outside such boxes is (out); restoring them teaches global
  anatomy and shape.

The same random draw is applied to all channels of one study (they are
co-registered), and different studies of a sequence get different draws.
All arrays are float32 (C, X, Y, Z); nothing here reads a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CorruptionConfig:
    """Probabilities and sizes of the Models-Genesis corruptions (defaults of the paper).

    Attributes:
        nonlinear_prob: Probability of the Bezier intensity transform.
        shuffle_prob: Probability of local pixel shuffling.
        shuffle_blocks: Number of shuffled blocks.
        shuffle_block_frac: Largest block edge as a fraction of the patch edge.
        paint_prob: Probability of in- or out-painting.
        inpaint_fraction: Share of painting draws that in-paint (the rest out-paint).
        paint_boxes: Most boxes painted (in) or kept (out).
    """

    nonlinear_prob: float = 0.9
    shuffle_prob: float = 0.5
    shuffle_blocks: int = 100
    shuffle_block_frac: float = 0.1
    paint_prob: float = 0.9
    inpaint_fraction: float = 0.8
    paint_boxes: int = 5


def bezier_curve(rng: np.random.Generator, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A random monotone cubic Bezier curve from (0, 0) to (1, 1), sampled at ``n`` points.

    Returns:
        ``(x, y)``, float64 (n,) each with ``x`` increasing.
    """
    p = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    t = np.linspace(0.0, 1.0, n)
    b = (
        ((1 - t) ** 3)[:, None] * p[0]
        + (3 * (1 - t) ** 2 * t)[:, None] * p[1]
        + (3 * (1 - t) * t**2)[:, None] * p[2]
        + (t**3)[:, None] * p[3]
    )
    order = np.argsort(b[:, 0])
    return b[order, 0], b[order, 1]


def nonlinear_transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map every channel of ``x`` (C, X, Y, Z) through one random Bezier curve (see module)."""
    xs, ys = bezier_curve(rng)
    if rng.random() < 0.5:
        ys = ys[::-1].copy()  # a decreasing curve inverts the contrast
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = float(x[c].min()), float(x[c].max())
        if hi - lo < 1e-6:
            out[c] = x[c]
            continue
        u = (x[c] - lo) / (hi - lo)
        out[c] = np.interp(u, xs, ys).astype(x.dtype) * (hi - lo) + lo
    return out


def local_shuffle(
    x: np.ndarray, rng: np.random.Generator, *, blocks: int, block_frac: float
) -> np.ndarray:
    """Permute the voxels inside ``blocks`` small random boxes of ``x`` (C, X, Y, Z)."""
    out = x.copy()
    spatial = x.shape[1:]
    edge_max = [max(1, int(block_frac * s)) for s in spatial]
    for _ in range(blocks):
        size = [int(rng.integers(1, m + 1)) for m in edge_max]
        start = [int(rng.integers(0, s - e + 1)) for s, e in zip(spatial, size, strict=True)]
        sl = tuple(slice(a, a + e) for a, e in zip(start, size, strict=True))
        block = out[(slice(None), *sl)].reshape(x.shape[0], -1)
        perm = rng.permutation(block.shape[1])
        out[(slice(None), *sl)] = block[:, perm].reshape(x.shape[0], *size)
    return out


def _random_box(spatial: tuple[int, ...], rng: np.random.Generator) -> tuple[slice, ...]:
    size = [int(rng.integers(max(1, s // 6), max(2, s // 3) + 1)) for s in spatial]
    start = [int(rng.integers(0, s - e + 1)) for s, e in zip(spatial, size, strict=True)]
    return tuple(slice(a, a + e) for a, e in zip(start, size, strict=True))


def paint(x: np.ndarray, rng: np.random.Generator, *, inpaint: bool, boxes: int) -> np.ndarray:
    """In-paint (boxes to noise) or out-paint (all but boxes to noise) ``x`` (C, X, Y, Z)."""
    spatial = tuple(x.shape[1:])
    lo, hi = float(x.min()), float(x.max())
    noise = rng.uniform(lo, hi, size=x.shape).astype(x.dtype)
    n = int(rng.integers(1, boxes + 1))
    region = np.zeros(spatial, dtype=bool)
    for _ in range(n):
        region[_random_box(spatial, rng)] = True
    replace = region if inpaint else ~region
    return np.where(replace[None], noise, x)


def corrupt(x: np.ndarray, rng: np.random.Generator, cfg: CorruptionConfig) -> np.ndarray:
    """One Models-Genesis corruption draw of a study ``x`` float32 (C, X, Y, Z).

    The input is not modified; at least one corruption is applied (non-linear
    when the draw picked none), so every sample poses a restoration problem.
    """
    out = x
    applied = False
    if rng.random() < cfg.nonlinear_prob:
        out = nonlinear_transform(out, rng)
        applied = True
    if rng.random() < cfg.shuffle_prob:
        out = local_shuffle(out, rng, blocks=cfg.shuffle_blocks, block_frac=cfg.shuffle_block_frac)
        applied = True
    if rng.random() < cfg.paint_prob:
        out = paint(out, rng, inpaint=rng.random() < cfg.inpaint_fraction, boxes=cfg.paint_boxes)
        applied = True
    if not applied:
        out = nonlinear_transform(out, rng)
    return np.ascontiguousarray(out, dtype=np.float32)
