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
  to a Dice the benchmark reports;
- ``memory_format="channels-last"`` runs a copy of the network in PyTorch's
  ``channels_last_3d`` memory format, with every instance norm replaced by the
  equal group norm of one channel per group (:func:`inference_network`).
  oneDNN's convolutions then take the tensors as they are instead of reordering
  them at every layer, and the group norm has a channels-last kernel where
  instance norm copies its input: 1.3-1.5x faster in float32 and, together with
  bf16, 3.5-4x faster than the float32 reference for networks of 16 channels or
  more at full resolution. For narrower networks (the shipped demo model, 8)
  bf16 is faster in the usual layout, so ``"auto"`` (:func:`resolve_memory_format`)
  keeps it there. The reference is ``precision="fp32", memory_format="ncdhw"``: the
  network exactly as trained.
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

#: Arithmetic the network runs in: ``"fp32"``, ``"bf16"``, ``"fp16"``, or ``"auto"``
#: (bf16 where the device computes it natively, else fp32; see :func:`resolve_precision`).
#: ``"auto"`` never picks fp16: its range (max 65504) is narrower than the activations
#: of a network trained in float32 may need; it is there for GPUs without bf16.
InferPrecision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(InferPrecision)
#: torch dtype of each resolved precision.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
#: Memory format of the network at inference: ``"ncdhw"`` (as trained),
#: ``"channels-last"`` (:func:`inference_network`), or ``"auto"`` (:func:`resolve_memory_format`).
InferMemoryFormat = Literal["auto", "ncdhw", "channels-last"]
MEMORY_FORMATS: tuple[str, ...] = get_args(InferMemoryFormat)
#: bf16 networks at least this wide at full resolution run channels-last under ``"auto"``.
CHANNELS_LAST_MIN_WIDTH = 16
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
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a requested precision (``"auto"`` resolved).

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS` (with a suggestion).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; {did_you_mean(precision, PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def resolve_memory_format(
    memory_format: str, model: SequenceModel, precision: str, device: torch.device | str = "cpu"
) -> str:
    """``"ncdhw"`` or ``"channels-last"`` for a requested memory format and a resolved precision.

    ``"auto"`` is the faster layout measured on CPU (``benchmarks/model_speed.py``,
    docs/speed.md): channels-last in float32, and in bf16 for networks whose
    full-resolution width is at least :data:`CHANNELS_LAST_MIN_WIDTH` channels;
    ``"ncdhw"`` for narrower bf16 networks and on GPUs (not measured there).

    Raises:
        ValueError: ``memory_format`` is not one of :data:`MEMORY_FORMATS` (with a suggestion).
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            f"unknown memory format {memory_format!r}; "
            f"{did_you_mean(memory_format, MEMORY_FORMATS)}"
        )
    if memory_format != "auto":
        return memory_format
    if torch.device(device).type != "cpu":
        return "ncdhw"
    if precision == "fp32":
        return "channels-last"
    width = int(model.config.scaled_features[0])
    return "channels-last" if width >= CHANNELS_LAST_MIN_WIDTH else "ncdhw"


def _instance_to_group_norm(module: torch.nn.Module) -> None:
    """Replace, in place, every instance norm without running statistics by the equal group norm.

    ``GroupNorm(C, C)`` normalises each channel of each sample over its voxels,
    as ``InstanceNorm3d`` does, with the same ``eps`` and affine parameters.
    """
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.instancenorm._InstanceNorm) and not (
            child.track_running_stats
        ):
            group = torch.nn.GroupNorm(
                child.num_features, child.num_features, eps=child.eps, affine=child.affine
            )
            if child.affine:
                group = group.to(child.weight.device)
                with torch.no_grad():
                    group.weight.copy_(child.weight)
                    group.bias.copy_(child.bias)
            setattr(module, name, group)
        else:
            _instance_to_group_norm(child)


def inference_network(
    model: SequenceModel, dtype: torch.dtype = torch.float32, memory_format: str = "ncdhw"
) -> SequenceModel:
    """The network that runs inference: ``model`` itself, or a converted copy.

    Args:
        model: A network (not changed).
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.
        memory_format: ``"ncdhw"`` or ``"channels-last"`` (resolved; see
            :func:`resolve_memory_format`).

    Returns:
        ``model`` itself for float32 in the usual layout; otherwise a copy in
        ``dtype``, and for ``"channels-last"`` with instance norms replaced by the
        equal group norms and parameters in the ``channels_last_3d`` format.
    """
    if dtype == torch.float32 and memory_format == "ncdhw":
        return model
    net = copy.deepcopy(model)
    if memory_format == "channels-last":
        _instance_to_group_norm(net)
    net = net.to(dtype)
    if memory_format == "channels-last":
        net = net.to(memory_format=torch.channels_last_3d)
    return net.eval()


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
    memory_format: InferMemoryFormat = "ncdhw",
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
        precision: ``"fp32"`` (the reference), ``"bf16"`` or ``"fp16"`` (a copy of the
            network in that type; the given model is not changed) or ``"auto"``
            (:func:`resolve_precision`).
        memory_format: ``"ncdhw"`` (the network as trained), ``"channels-last"``
            (:func:`inference_network`) or ``"auto"`` (:func:`resolve_memory_format`).
            ``precision="fp32", memory_format="ncdhw"`` is the reference; the library
            functions default to it, ``metstrack predict`` to ``"auto"`` for both.

    Returns:
        float32 (T, K, X, Y, Z) probabilities (softmax over K) on the CPU.

    Raises:
        InputShapeError: Wrong rank or channel count, or a window size the network
            does not accept.
        ValueError: Unknown ``precision`` or ``memory_format``.
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
    resolved = resolve_precision(precision, device)
    dtype = DTYPES[resolved]
    fmt = resolve_memory_format(memory_format, model, resolved, device)
    net = inference_network(model, dtype, fmt)
    torch_format = torch.channels_last_3d if fmt == "channels-last" else torch.contiguous_format
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
                win = win.to(dtype).contiguous(memory_format=torch_format)
                logits, new_state = net.step(win, state)
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
