"""Start a network from pretrained weights, listing every key that does not carry over.

Pretrained files (``metstrack pretrain``), training checkpoints (``.ckpt``) and
metstrack checkpoints all hold the network under ``net.<module name>``, so one
loader serves them all. Loading is *partial* by design: a pretraining network
restores images (its ``final_conv`` has one output per modality) and may or may
not hold the ConvLSTM, while the network being fine-tuned segments (two
classes) and may be STT, the no-memory ``unet`` or another basic-U-Net variant.
Each key of the target network ends in exactly one of these groups:

* ``loaded``: same name, same shape; copied.
* ``adapted``: the first convolution (``conv_0.conv_0.conv.weight``) when the
  input channels differ but the pretrained file records its modalities: the
  kernels of every modality present in both are copied by modality name (so
  a network with a modality dropped, or with the prior-mask channel added,
  still starts from the pretrained encoder); channels without a pretrained
  counterpart (the prior mask, a new modality) start at zero.
* ``shape_mismatch``: same name, other shape (e.g. ``final_conv`` of a
  restoration head); the target keeps its initialisation.
* ``missing``: in the target, absent from the file (e.g. ``convlstm.*`` when
  the file came from the no-memory network); initialisation kept.
* ``unexpected``: in the file, absent from the target (e.g. ``convlstm.*``
  loaded into ``unet``); ignored.

Nothing is dropped silently: every group is logged (WARNING when a group
other than ``loaded`` is non-empty) and :func:`init_from_pretrained` writes the
whole report to ``init_weights.json`` in the run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metstrack.core.atomic import write_json_atomic
from metstrack.errors import CheckpointError
from metstrack.io.checkpoint import _network_state, _read

log = logging.getLogger(__name__)

#: The first convolution of the basic U-Net / STT (input channels on axis 1).
FIRST_CONV = "conv_0.conv_0.conv.weight"
#: File the report is written to inside a run folder.
REPORT_NAME = "init_weights.json"


@dataclass(frozen=True)
class InitWeightsReport:
    """Which keys of a network came from a pretrained file.

    Attributes:
        source: The weights file.
        loaded: Keys copied unchanged.
        adapted: Keys copied after matching input channels by modality
            (``"key: how"``).
        shape_mismatch: Keys present in both with other shapes (``"key: file
            (..) vs network (..)"``); the network's initialisation is kept.
        missing: Network keys absent from the file (initialisation kept).
        unexpected: File keys the network does not have (ignored).
    """

    source: str
    loaded: tuple[str, ...] = ()
    adapted: tuple[str, ...] = ()
    shape_mismatch: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def unmatched(self) -> tuple[str, ...]:
        """Every key that did not load unchanged (adapted, mismatched, missing, unexpected)."""
        return (*self.adapted, *self.shape_mismatch, *self.missing, *self.unexpected)

    @property
    def fraction_loaded(self) -> float:
        """Share of the network's parameters (by element count) taken from the file."""
        total = self.extra.get("network_elements", 0)
        return float(self.extra.get("loaded_elements", 0)) / total if total else 0.0


def read_pretrained(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Network weights (without ``net.``) and metadata of a pretrained file or checkpoint.

    Returns:
        ``(state, meta)``; ``meta`` holds ``modalities`` (channel order of the
        first convolution) when the file records it.

    Raises:
        CheckpointError: Missing or unreadable file, no network weights.
    """
    path = Path(path)
    payload = _read(path, "cpu")
    state = dict(_network_state(path, payload))
    meta: dict[str, Any] = {}
    hp = payload.get("hyper_parameters") if isinstance(payload, Mapping) else None
    if isinstance(hp, Mapping):
        model = hp.get("model")
        if isinstance(model, Mapping) and "modalities" in model:
            meta["modalities"] = list(model["modalities"])
            meta["prior_mask"] = bool(model.get("prior_mask", False))
    return state, meta


def load_pretrained(
    net: nn.Module,
    path: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    prior_mask: bool = False,
) -> InitWeightsReport:
    """Copy every fitting tensor of a pretrained file into ``net`` (in place).

    Args:
        net: The network to initialise (e.g. ``SequenceSegmentationModule.net``).
        path: Pretrained weights (``pretrained.pt``) or any metstrack/Lightning checkpoint.
        modalities: Channel order of ``net``'s image inputs; with the file's own
            modalities it allows adapting the first convolution by modality name.
        prior_mask: ``net`` takes the prior-mask channel after the image channels.

    Returns:
        The :class:`InitWeightsReport` (also logged).

    Raises:
        CheckpointError: Unreadable file, or not a single tensor fits ``net``
            (the file belongs to an unrelated architecture).
    """
    state, meta = read_pretrained(path)
    want = net.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    loaded, adapted, mismatch, missing = [], [], [], []
    loaded_el = 0
    for key, target in want.items():
        if key not in state:
            missing.append(key)
            continue
        src = state[key]
        if tuple(src.shape) == tuple(target.shape):
            new_state[key] = src.to(dtype=target.dtype)
            loaded.append(key)
            loaded_el += target.numel()
            continue
        if key == FIRST_CONV and modalities is not None and "modalities" in meta:
            w, how = _adapt_first_conv(
                src, target, list(meta["modalities"]), list(modalities), prior_mask
            )
            if w is not None:
                new_state[key] = w
                adapted.append(f"{key}: {how}")
                loaded_el += target.numel()
                continue
        mismatch.append(f"{key}: file {tuple(src.shape)} vs network {tuple(target.shape)}")
    unexpected = [k for k in state if k not in want]
    if not new_state:
        raise CheckpointError(
            f"{path}: no tensor fits the network (e.g. missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); these weights belong to another architecture"
        )
    net.load_state_dict(new_state, strict=False)
    report = InitWeightsReport(
        source=str(path),
        loaded=tuple(loaded),
        adapted=tuple(adapted),
        shape_mismatch=tuple(mismatch),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        extra={
            "network_elements": int(sum(t.numel() for t in want.values())),
            "loaded_elements": int(loaded_el),
            "file_modalities": meta.get("modalities"),
        },
    )
    _log_report(report)
    return report


def _adapt_first_conv(
    src: torch.Tensor,
    target: torch.Tensor,
    src_modalities: list[str],
    dst_modalities: list[str],
    prior_mask: bool,
) -> tuple[torch.Tensor | None, str]:
    """Build the first convolution's kernels for ``dst`` channels from ``src`` by modality."""
    if (
        src.ndim != target.ndim
        or src.shape[0] != target.shape[0]
        or src.shape[2:] != target.shape[2:]
    ):
        return None, ""
    if src.shape[1] < len(src_modalities):
        return None, ""
    n_dst = len(dst_modalities) + int(prior_mask)
    if target.shape[1] != n_dst:
        return None, ""
    w = torch.zeros_like(target)
    copied, zeroed = [], []
    for j, m in enumerate(dst_modalities):
        if m in src_modalities:
            w[:, j] = src[:, src_modalities.index(m)].to(target.dtype)
            copied.append(m)
        else:
            zeroed.append(m)
    if prior_mask:
        zeroed.append("prior mask")
    if not copied:
        return None, ""
    how = f"input channels matched by modality: copied {copied}"
    if zeroed:
        how += f", zero-initialised {zeroed}"
    return w, how


def _log_report(r: InitWeightsReport) -> None:
    log.info("initialised %d tensors from %s", len(r.loaded), r.source)
    for label, items in (
        ("adapted", r.adapted),
        ("shape mismatch (kept initialisation)", r.shape_mismatch),
        ("missing from the file (kept initialisation)", r.missing),
        ("unexpected in the file (ignored)", r.unexpected),
    ):
        if items:
            log.warning("init weights %s: %d %s: %s", r.source, len(items), label, ", ".join(items))


def init_from_pretrained(
    net: nn.Module,
    path: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    prior_mask: bool = False,
    out_dir: str | Path | None = None,
) -> InitWeightsReport:
    """:func:`load_pretrained`, then write the report to ``<out_dir>/init_weights.json``."""
    report = load_pretrained(net, path, modalities=modalities, prior_mask=prior_mask)
    if out_dir is not None:
        payload = asdict(report)
        payload["unmatched"] = list(report.unmatched)
        payload["fraction_loaded"] = report.fraction_loaded
        write_json_atomic(Path(out_dir) / REPORT_NAME, payload)
    return report
