"""Whole-study sliding-window inference over a patient's sequence, memory carried in time.

Each study is predicted whole with overlapping windows (MONAI's
``sliding_window_inference``, Gaussian blending) while the network's temporal
state is carried from study to study *per window*: the loop over time is the
outer loop, and the state of each window location (and each flip of the
test-time augmentation) is kept between studies. This equals running the
whole sequence through every window, and it lets the prior-mask mode feed the
previous study's full prediction into the next study.

Volumes whose sizes do not fit the network are padded with zeros (MONAI pads
to the window size; with ``roi_size=None`` the window is the volume rounded up
to the network's size multiple) and the padding is removed from the output;
nothing is cropped.

Speed (measured by ``benchmarks/model_speed.py``; see ``docs/speed.md``):

- the network runs under :func:`torch.inference_mode` (no autograd bookkeeping);
- windows go through the network ``sw_batch_size`` at a time (default 2). On
  CPU this is more than batching: PyTorch sends a 3D convolution with one
  sample and few channels (``C * X * Y < 20480``, every layer of the small
  shipped network) to its slow native kernel, and only a batch of two or more
  to oneDNN, 5x faster per window;
- ``precision="bf16"`` runs a bfloat16 copy of the network (weights and
  activations; probabilities come back as float32). On CPUs with native bf16
  (AVX512-BF16 / AMX) it is about 2x faster; elsewhere it is emulated and
  slower, so ``"auto"`` picks it only where :func:`bf16_native` is true.
  Probabilities then differ from float32 by up to a few 1e-2; the masks agree
  to a Dice the benchmark reports.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from monai.inferers import sliding_window_inference

from metstrack.errors import did_you_mean
from metstrack.models.base import InputShapeError, SequenceModel

log = logging.getLogger(__name__)

#: Arithmetic the network runs in: ``"fp32"``, ``"bf16"``, or ``"auto"`` (bf16
#: where the device computes it natively, else fp32; see :func:`resolve_precision`).
InferPrecision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(InferPrecision)
#: Blending of overlapping sliding windows.
BlendMode = Literal["gaussian", "constant"]


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """True when ``device`` computes bfloat16 convolutions natively.

    CPU: oneDNN reports AVX512-BF16 or AMX support; CUDA: the GPU supports bf16.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # a build without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for a requested precision (``"auto"`` resolved on ``device``).

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS` (with a suggestion).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; {did_you_mean(precision, PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def padded_size(spatial: Sequence[int], model: SequenceModel) -> tuple[int, int, int]:
    """Smallest size >= ``spatial`` that ``model`` accepts (multiples of its divisor)."""
    if model.fixed_size is not None:
        return tuple(int(s) for s in model.fixed_size)  # type: ignore[return-value]
    d = model.size_divisor
    return tuple(max(-(-int(s) // d) * d, model.min_size) for s in spatial)  # type: ignore[return-value]


def flip_sets(tta_flips: bool) -> list[tuple[int, ...]]:
    """Spatial axes (of a (1, C, X, Y, Z) tensor) flipped by each test-time augmentation.

    With ``tta_flips`` all 8 mirror combinations of X, Y, Z (nnU-Net's mirroring),
    else only the identity.
    """
    if not tta_flips:
        return [()]
    axes = (2, 3, 4)
    return [c for r in range(4) for c in itertools.combinations(axes, r)]


def _split_state(state: Any, n: int) -> list[Any]:
    if state is None:
        return [None] * n
    parts = [torch.split(s, 1, dim=0) for s in state]
    return [tuple(p[i] for p in parts) for i in range(n)]


def _merge_state(states: list[Any]) -> Any:
    if states[0] is None:
        return None
    return tuple(torch.cat([s[j] for s in states], dim=0) for j in range(len(states[0])))


@torch.inference_mode()
def predict_sequence(
    model: SequenceModel,
    images: torch.Tensor,
    *,
    roi_size: Sequence[int] | None,
    overlap: float = 0.5,
    mode: BlendMode = "gaussian",
    sw_batch_size: int = 2,
    tta_flips: bool = False,
    prior_masks: torch.Tensor | None = None,
    prior_threshold: float = 0.5,
    precision: InferPrecision = "fp32",
) -> torch.Tensor:
    """Class probabilities for every study of one patient, memory carried in time.

    Args:
        model: A network from :func:`metstrack.models.registry.build_model`; it is
            put in eval mode and run on the device of its parameters.
        images: float32 (T, C, X, Y, Z) studies of one patient in time order, all on
            one grid (the baseline's), intensities normalised as in training;
            ``C = model.config.in_channels`` (without the prior-mask channel).
        roi_size: Window size (X, Y, Z) in voxels (a multiple of the network's size
            divisor, e.g. 16 for STT); ``None`` predicts each study in one window
            covering the whole (padded) volume.
        overlap: Fraction of overlap between neighbouring windows, in [0, 1).
        mode: Blending of overlapping windows: ``"gaussian"`` or ``"constant"``.
        sw_batch_size: Windows run through the network at once (2: see the
            module docstring for why one is slow on CPU).
        tta_flips: Average the probabilities over the 8 mirror flips of X, Y, Z.
        prior_masks: Prior-mask mode only: float (T, X, Y, Z) mask of the previous
            study for each study (registered onto the same grid). By default the
            previous study's prediction (foreground probability >= ``prior_threshold``)
            feeds the next study, and the first study gets zeros.
        prior_threshold: Threshold turning the previous prediction into a mask.
        precision: ``"fp32"`` (the reference), ``"bf16"`` (a bfloat16 copy of the
            network; the given model is not changed) or ``"auto"``
            (:func:`resolve_precision`).

    Returns:
        float32 (T, K, X, Y, Z) probabilities (softmax over K) on the CPU.

    Raises:
        InputShapeError: Wrong rank or channel count, or a window size the network
            does not accept.
        ValueError: Unknown ``precision``.
    """
    cfg = model.config
    if images.ndim != 5:
        raise InputShapeError(
            f"predict_sequence: expected one patient (T, C, X, Y, Z), found shape "
            f"{tuple(images.shape)}"
        )
    t_len, c = int(images.shape[0]), int(images.shape[1])
    spatial = tuple(int(s) for s in images.shape[2:])
    if c != cfg.in_channels:
        raise InputShapeError(
            f"predict_sequence: the network takes {cfg.in_channels} image channels "
            f"({', '.join(cfg.modalities)}), found {c}"
        )
    roi = padded_size(spatial, model) if roi_size is None else tuple(int(r) for r in roi_size)
    model.check_spatial(roi)
    if prior_masks is not None:
        if not cfg.prior_mask:
            raise InputShapeError(
                "predict_sequence: prior_masks given to a network without prior-mask mode"
            )
        if tuple(prior_masks.shape) != (t_len, *spatial):
            raise InputShapeError(
                f"predict_sequence: prior_masks must have shape {(t_len, *spatial)}, "
                f"found {tuple(prior_masks.shape)}"
            )
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    dtype = torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32
    net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    flips = flip_sets(tta_flips)
    states: dict[tuple, Any] = {}
    out = torch.empty((t_len, cfg.out_channels, *spatial), dtype=torch.float32)
    prior = torch.zeros(spatial, dtype=torch.float32)
    for t in range(t_len):
        x_t = images[t].to(torch.float32)
        if cfg.prior_mask:
            if prior_masks is not None:
                prior = prior_masks[t].to(torch.float32)
            x_t = torch.cat([x_t, prior[None]], dim=0)
        acc = torch.zeros((cfg.out_channels, *spatial), dtype=torch.float32)
        for f in flips:

            def predictor(win: torch.Tensor, coords: list, f: tuple[int, ...] = f) -> torch.Tensor:
                keys = [(f, tuple((s.start, s.stop) for s in sl[2:])) for sl in coords]
                state = _merge_state([states.get(k) for k in keys])
                logits, new_state = net.step(win.to(dtype), state)
                for k, s in zip(keys, _split_state(new_state, len(keys)), strict=True):
                    states[k] = s
                return torch.softmax(logits.float(), dim=1)

            x_in = x_t[None]
            if f:
                x_in = torch.flip(x_in, dims=f)
            prob = sliding_window_inference(
                x_in,
                roi_size=roi,
                sw_batch_size=sw_batch_size,
                predictor=predictor,
                overlap=overlap,
                mode=mode,
                padding_mode="constant",
                cval=0.0,
                sw_device=device,
                device=torch.device("cpu"),
                with_coord=True,
            )
            if f:
                prob = torch.flip(prob, dims=f)
            acc += prob[0].float()
        out[t] = acc / len(flips)
        if cfg.prior_mask and prior_masks is None:
            prior = ((1.0 - out[t, 0]) >= prior_threshold).to(torch.float32)
        log.debug("predicted study %d/%d (%d windows cached)", t + 1, t_len, len(states))
    return out
