"""Which values of a label file are lesion: binary masks, and multi-class labels by choice.

A reference label must be a binary mask (0/1) unless the caller says which
values are lesion. A multi-class file (a BraTS-METS ``seg``: 1 non-enhancing
tumour core, 2 surrounding FLAIR hyperintensity / oedema, 3 enhancing tumour)
is never read as "anything non-zero", which would count oedema as tumour; it
is refused with the fix, or reduced to the chosen values
(:data:`LABEL_PRESETS` or explicit integers). ``metstrack evaluate`` and
``metstrack preprocess`` take the choice as ``--labels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metstrack.errors import ConfigError, LabelError, did_you_mean

#: Named lesion-value sets (BraTS-METS 2023 label convention).
LABEL_PRESETS: dict[str, tuple[int, ...]] = {
    "binary": (1,),
    "brats-tc": (1, 3),  # tumour core: necrosis / non-enhancing core + enhancing tumour
    "brats-et": (3,),  # enhancing tumour
    "brats-wt": (1, 2, 3),  # whole tumour, oedema included
}


def parse_label_values(text: str) -> tuple[int, ...]:
    """Parse ``--labels``: a preset name of :data:`LABEL_PRESETS` or integers such as ``2,3``.

    Raises:
        ConfigError: Neither a preset nor positive integers (lists the presets).
    """
    key = text.strip().lower()
    if key in LABEL_PRESETS:
        return LABEL_PRESETS[key]
    try:
        values = tuple(sorted({int(v) for v in key.replace(" ", "").split(",") if v}))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(
            f"--labels {text!r}: expected a preset or positive label values such as 1,3; "
            + did_you_mean(key, LABEL_PRESETS)
        )
    return values


def lesion_mask(arr: np.ndarray, path: str | Path | None, values: Sequence[int] = ()) -> np.ndarray:
    """The binary lesion mask of a label array.

    Args:
        arr: (X, Y, Z) label voxels, integer-valued (checked by the reader).
        path: The file, named in errors.
        values: Label values that are lesion; empty requires a binary (0/1) file.

    Returns:
        uint8 (X, Y, Z) mask, 1 where the voxel is lesion.

    Raises:
        LabelError: ``values`` is empty and the file holds values other than 0 and 1.
    """
    if len(values):
        return np.isin(arr, np.asarray(values)).astype(np.uint8)
    found = np.unique(arr)
    extra = [int(v) for v in found if v not in (0, 1)]
    if extra:
        shown = ", ".join(str(v) for v in extra[:5])
        raise LabelError(
            f"{path}: a multi-class label (values {shown} besides 0/1), not a binary mask; "
            "choose the lesion values with --labels, e.g. --labels brats-tc (1,3: BraTS-METS "
            "tumour core), --labels brats-et (3: enhancing) or --labels "
            f"{','.join(str(v) for v in extra[:3])}"
        )
    return (arr != 0).astype(np.uint8)
