"""Random choices of a training sample: the time window, the patch, the order of patients.

Every choice draws from a ``numpy.random.Generator`` seeded by the sampler
with ``(seed, epoch, position)``, so a run is reproducible whatever the number
of loader workers or processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from metstrack.train.cache import CachedLesion
from metstrack.train.config import Window


def choose_window(
    n_studies: int,
    max_studies: int,
    *,
    labelled: Sequence[bool],
    rng: np.random.Generator,
    mode: Window = "random",
) -> tuple[int, int]:
    """Pick a run of consecutive studies (time order kept).

    Args:
        n_studies: Studies of the patient.
        max_studies: Longest sequence.
        labelled: Per study, whether it carries a label (length ``n_studies``).
        rng: Random generator.
        mode: ``"random"``: a uniformly random start among the windows that
            hold at least one labelled study (any start when none does);
            ``"first"``: always the first studies.

    Returns:
        Half-open ``(start, stop)`` study indices.
    """
    if n_studies <= max_studies:
        return 0, n_studies
    if mode == "first":
        return 0, max_studies
    starts = np.arange(n_studies - max_studies + 1)
    lab = np.asarray(labelled, dtype=bool)
    useful = [s for s in starts if lab[s : s + max_studies].any()]
    pool = useful if useful else list(starts)
    start = int(pool[int(rng.integers(len(pool)))])
    return start, start + max_studies


def union_bbox(
    boxes: Sequence[tuple[int, int, int, int, int, int]],
) -> tuple[int, int, int, int, int, int]:
    """Smallest half-open box holding every box (x0, y0, z0, x1, y1, z1)."""
    arr = np.asarray(boxes)
    lo = arr[:, :3].min(axis=0)
    hi = arr[:, 3:].max(axis=0)
    return (*(int(v) for v in lo), *(int(v) for v in hi))  # type: ignore[return-value]


def choose_patch_start(
    shape: Sequence[int],
    patch: Sequence[int],
    *,
    foreground_bbox: tuple[int, int, int, int, int, int],
    lesions: Sequence[CachedLesion],
    lesion_fraction: float,
    rng: np.random.Generator,
) -> tuple[tuple[int, int, int], bool]:
    """Pick the corner of a training patch.

    With probability ``lesion_fraction`` (and at least one lesion) the patch
    holds a lesion chosen uniformly among lesions, not voxels, so a 3 mm3
    metastasis is as likely as a 3 cm3 one; the lesion lies at a random
    position within the central half of the patch. Otherwise the patch centre
    is uniform inside the foreground box.

    Args:
        shape: Volume shape (X, Y, Z).
        patch: Patch size (X, Y, Z).
        foreground_bbox: Half-open box of the head.
        lesions: Candidate lesions (every labelled study of the window).
        lesion_fraction: Probability of a lesion-centred patch.
        rng: Random generator.

    Returns:
        ``(start, on_lesion)``: the corner (may be negative or run past the
        volume when the volume is smaller than the patch; the outside is
        zero-padded) and whether a lesion was targeted.
    """
    on_lesion = bool(lesions) and rng.random() < lesion_fraction
    start = []
    if on_lesion:
        les = lesions[int(rng.integers(len(lesions)))]
        for ax in range(3):
            jitter = rng.uniform(-patch[ax] / 4, patch[ax] / 4)
            start.append(int(round(les.centroid_vox[ax] + jitter - patch[ax] / 2)))
    else:
        for ax in range(3):
            lo, hi = foreground_bbox[ax], foreground_bbox[ax + 3]
            centre = rng.uniform(lo, max(hi, lo + 1))
            start.append(int(round(centre - patch[ax] / 2)))
    out = []
    for ax in range(3):
        if shape[ax] >= patch[ax]:
            out.append(int(np.clip(start[ax], 0, shape[ax] - patch[ax])))
        else:  # centre the small volume in the patch
            out.append(-((patch[ax] - shape[ax]) // 2))
    return (out[0], out[1], out[2]), on_lesion


def extract(arr: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Copy ``arr[..., start:start+size]`` over the last three axes, zero outside the array.

    Args:
        arr: (..., X, Y, Z) array (a memory map is read only where needed).
        start: Corner (may be negative).
        size: Output spatial size.

    Returns:
        A new array of shape (..., *size) and ``arr``'s dtype.
    """
    lead = arr.shape[:-3]
    out = np.zeros((*lead, *size), dtype=arr.dtype)
    src, dst = [], []
    for ax in range(3):
        n = arr.shape[len(lead) + ax]
        a0, a1 = max(start[ax], 0), min(start[ax] + size[ax], n)
        if a1 <= a0:
            return out
        src.append(slice(a0, a1))
        dst.append(slice(a0 - start[ax], a1 - start[ax]))
    out[(..., *dst)] = arr[(..., *src)]
    return out


def whole_volume_region(
    shape: Sequence[int],
    foreground_bbox: tuple[int, int, int, int, int, int] | None,
    *,
    multiple: int,
    min_size: Sequence[int],
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Region that covers the foreground (or the whole volume), padded to a multiple.

    Args:
        shape: Volume shape (X, Y, Z).
        foreground_bbox: Box to keep, or ``None`` for the whole volume.
        multiple: Each side becomes a multiple of this.
        min_size: Smallest side lengths (e.g. the sliding-window size).

    Returns:
        ``(start, size)`` for :func:`extract`; ``start`` may be negative (zero-padding).
    """
    box = foreground_bbox if foreground_bbox is not None else (0, 0, 0, *shape)
    start, size = [], []
    for ax in range(3):
        lo, hi = box[ax], box[ax + 3]
        n = max(int(math.ceil((hi - lo) / multiple)) * multiple, int(min_size[ax]), multiple)
        extra = n - (hi - lo)
        s = lo - extra // 2
        # stay inside the volume where it is large enough, so padding happens only if needed
        if shape[ax] >= n:
            s = int(np.clip(s, 0, shape[ax] - n))
        start.append(int(s))
        size.append(int(n))
    return (start[0], start[1], start[2]), (size[0], size[1], size[2])


class SequenceSampler(Sampler):
    """Yields ``(patient index, sample seed)`` for one epoch, split across processes.

    The order is a fresh permutation of the patients each epoch (shuffling),
    repeated to ``num_samples``; each process takes every ``world_size``-th
    item, so every process sees the same number of steps. Lightning calls
    :meth:`set_epoch` before each epoch.

    Args:
        n_items: Number of patients.
        num_samples: Samples per epoch over all processes (0: ``n_items``).
        seed: Base seed.
        shuffle: Shuffle patients (training); else keep their order.
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        n_items: int,
        *,
        num_samples: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n_items < 1:
            raise ValueError("SequenceSampler needs at least one item")
        self.n_items = n_items
        total = num_samples if num_samples > 0 else n_items
        self.per_rank = int(math.ceil(total / world_size))
        self.total = self.per_rank * world_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes the permutation and every sample seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order: list[int] = []
        while len(order) < self.total:
            block = rng.permutation(self.n_items) if self.shuffle else np.arange(self.n_items)
            order.extend(int(i) for i in block)
        seeds = rng.integers(0, 2**31 - 1, size=self.total)
        for pos in range(self.rank, self.total, self.world_size):
            yield order[pos], int(seeds[pos])


class ShardSampler(Sampler):
    """Validation order: patients in order, every ``world_size``-th one on each process.

    Shards are evened out by repeating patients (so every process runs the
    same number of validation steps, which DDP needs), but each item carries a
    ``count`` flag and repeats are flagged ``False`` so the summed validation
    counts stay exact.

    Yields:
        ``(patient index, count)``.
    """

    def __init__(self, n_items: int, *, rank: int = 0, world_size: int = 1) -> None:
        per_rank = int(math.ceil(n_items / world_size)) if n_items else 0
        self.items = []
        for pos in range(rank, per_rank * world_size, world_size):
            self.items.append((pos % n_items, pos < n_items))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        return iter(self.items)
