"""Saving and loading network checkpoints, including published Lightning checkpoints.

Format. A checkpoint is a ``torch.save`` dict laid out like a Lightning
checkpoint of a ``LightningModule`` that holds the network as ``self.net``::

    {
      "state_dict": {"net.<module name>": tensor, ...},
      "hyper_parameters": {"model": {<ModelConfig fields>}, <extra metadata>},
      "metstrack_version": "0.1.0",
      "format": "metstrack-checkpoint/1",
    }

so metstrack's own files, the training module's Lightning ``.ckpt`` files
(``self.net`` plus ``save_hyperparameters({"model": to_dict(cfg), ...})``) and a
published Lightning checkpoint all load through :func:`load_checkpoint`.

Key mapping (published Lightning checkpoint -> :class:`~metstrack.models.stt.STTUNet`):

* ``net.<name>`` -> ``<name>``: the published module names are used verbatim
  (see :func:`metstrack.models.weights.published_layout` for every name and shape); a ``_orig_mod.``
  segment left by ``torch.compile`` is dropped.
* Keys outside ``net.`` (loss weights, metric buffers of the LightningModule)
  are not network weights; they are skipped and logged.
* With no model configuration in the file, the configuration is read from the
  tensor shapes: ``in_channels = conv_0.conv_0.conv.weight.shape[1]``,
  ``features[0] = conv_0.conv_0.conv.weight.shape[0]``,
  ``features[i] = down_i.convs.conv_0.conv.weight.shape[0]`` (i = 1..4),
  ``features[5] = upcat_1.convs.conv_1.conv.weight.shape[0]``,
  ``out_channels = final_conv.weight.shape[0]``; ``convlstm.conv.weight``
  present -> ``"stt"``, absent -> ``"unet"``.

Every key must match: a missing, unexpected or differently shaped tensor is a
:class:`~metstrack.errors.CheckpointError` naming the file and listing them.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metstrack import __version__
from metstrack.config import from_dict, to_dict
from metstrack.core.atomic import atomic_path, write_json_atomic
from metstrack.errors import CheckpointError, ConfigError
from metstrack.models.base import SequenceModel
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.models.weights import SHOWN_KEYS as _SHOWN
from metstrack.models.weights import check_state_fits, infer_config

log = logging.getLogger(__name__)

#: Value of the ``"format"`` key of checkpoints written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "metstrack-checkpoint/1"
#: Prefix of the network's keys in a Lightning checkpoint (``self.net``).
NET_PREFIX = "net."
#: numpy dtypes whose class a pickled numpy scalar or array may name.
_NUMPY_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", "bool")  # fmt: skip


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, cfg: ModelConfig, **meta: Any
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: Target file (``.ckpt`` or ``.pt`` by convention); parents are created.
        model: The network (its ``state_dict`` is stored under ``net.``).
        cfg: The configuration it was built from.
        **meta: Extra plain metadata stored in ``hyper_parameters`` (epoch, score,
            data fingerprint...). Must not use the key ``"model"``.

    Returns:
        ``path``.
    """
    if "model" in meta:
        raise ValueError("save_checkpoint: 'model' is reserved for the model configuration")
    payload = {
        "state_dict": OrderedDict(
            (NET_PREFIX + k, v.detach().cpu().clone()) for k, v in model.state_dict().items()
        ),
        "hyper_parameters": {"model": to_dict(cfg), **meta},
        "metstrack_version": __version__,
        "format": CHECKPOINT_FORMAT,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | Path,
    *,
    config: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[SequenceModel, ModelConfig]:
    """Load a network from a metstrack, Lightning or published checkpoint.

    Args:
        path: The checkpoint file.
        config: The architecture to build; by default the one stored in the file,
            else the one read from the tensor shapes (see the module docstring).
        map_location: Device for the loaded tensors.

    Returns:
        ``(model, cfg)``: the network in eval mode holding the weights, and its config.

    Raises:
        CheckpointError: Unreadable file, no state dict, no usable configuration,
            or weights that do not fit the architecture (missing, unexpected or
            differently shaped keys, all listed).
    """
    path = Path(path)
    payload = _read(path, map_location)
    state = _network_state(path, payload)
    if config is not None:
        cfg = config
    else:
        cfg = _stored_config(path, payload) or infer_config(state, path=path)
    try:
        model = build_model(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    check_state_fits(path, model, state, cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    log.info("loaded %s (%s, %d tensors) from %s", cfg.name, cfg.scaled_features, len(state), path)
    return model, cfg


#: The only Python types a checkpoint may hold besides tensors and plain containers
#: (dict, list, tuple, str, numbers): what Lightning 1.x/2.x and the published STT
#: checkpoints store in ``hyper_parameters`` and callback states. Each entry is
#: ``(type, "module.qualified.Name")`` as it appears in the pickle.
TRUSTED_GLOBALS: tuple[tuple[Any, str], ...] = (
    # Lightning's AttributeDict (hyper-parameters) is read back as a plain dict.
    *(
        (dict, name)
        for name in (
            "lightning.fabric.utilities.data.AttributeDict",
            "lightning_fabric.utilities.data.AttributeDict",
            "lightning.pytorch.utilities.parsing.AttributeDict",
            "pytorch_lightning.utilities.parsing.AttributeDict",
        )
    ),
    (argparse.Namespace, "argparse.Namespace"),
    (pathlib.PosixPath, "pathlib.PosixPath"),
    (pathlib.PurePosixPath, "pathlib.PurePosixPath"),
    (pathlib.WindowsPath, "pathlib.WindowsPath"),
    (pathlib.PureWindowsPath, "pathlib.PureWindowsPath"),
    (np.dtype, "numpy.dtype"),
    (np.ndarray, "numpy.ndarray"),
    *(
        (getattr(np._core.multiarray, fn), f"{mod}.multiarray.{fn}")
        for fn in ("scalar", "_reconstruct")
        for mod in ("numpy.core", "numpy._core")
    ),
    *((type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}") for t in _NUMPY_DTYPES),
    (ModelConfig, "metstrack.models.config.ModelConfig"),
)


def _read(path: Path, map_location: str | torch.device) -> Any:
    """Unpickle with ``weights_only=True`` and the :data:`TRUSTED_GLOBALS` allow-list only.

    Nothing outside the allow-list is ever constructed, so a checkpoint cannot
    run code while loading; a file that needs anything else is refused, naming
    the type(s) it asks for.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(list(TRUSTED_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
        refused = ", ".join(_untrusted_globals(path)) or _unpickler_reason(exc)
        raise CheckpointError(
            f"{path}: refused: the checkpoint holds Python object(s) of type "
            f"{refused} that could run code when loaded; only tensors, "
            "plain containers and Lightning hyper-parameters are trusted. Re-save just the "
            "weights (torch.save({'state_dict': model.state_dict()}, ...)) where the file is "
            "trusted"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle fails in many ways
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from exc


def _unpickler_reason(exc: Exception) -> str:
    """The one-line reason of torch's weights-only refusal (its message spans a page)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        return rest.splitlines()[0].strip() if rest else "unknown"
    return "unknown"


def _untrusted_globals(path: Path) -> list[str]:
    """The global names a checkpoint's pickle asks for beyond the allow-list (read, never run)."""
    trusted = {name for _, name in TRUSTED_GLOBALS}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only decorates the refusal message
        return []
    return sorted(n for n in names if n not in trusted)


def _network_state(path: Path, payload: Any) -> OrderedDict[str, torch.Tensor]:
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{path}: expected a checkpoint dict with a 'state_dict', "
            f"found {type(payload).__name__}"
        )
    sd = payload.get("state_dict", payload)
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: no 'state_dict' with network weights in the checkpoint")
    keys = [k for k in sd if isinstance(k, str)]
    prefixed = [k for k in keys if k.startswith(NET_PREFIX)]
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    if prefixed:
        skipped = [k for k in keys if not k.startswith(NET_PREFIX)]
        if skipped:
            log.info("%s: %d non-network keys skipped (e.g. %s)", path, len(skipped), skipped[0])
        for k in prefixed:
            out[k[len(NET_PREFIX) :].replace("_orig_mod.", "")] = sd[k]
    else:  # a bare network state dict
        for k in keys:
            out[k.replace("_orig_mod.", "")] = sd[k]
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: state_dict entries are not tensors: {', '.join(bad[:_SHOWN])}"
        )
    return out


def _stored_config(path: Path, payload: Mapping) -> ModelConfig | None:
    hp = payload.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        return None
    for key in ("model", "model_config"):
        raw = hp.get(key)
        if isinstance(raw, ModelConfig):
            return raw
        if isinstance(raw, Mapping):
            try:
                return from_dict(ModelConfig, dict(raw), where=f"{path}: hyper_parameters.{key}")
            except ConfigError as exc:
                raise CheckpointError(str(exc)) from exc
    return None


#: Provenance key of the voxel size (mm) a checkpoint was trained at.
TRAINING_SPACING_KEY = "input_spacing_mm"


#: Provenance keys of the operating point picked on validation patients.
THRESHOLD_KEY = "threshold"
MIN_VOLUME_KEY = "min_volume_mm3"


def provenance_number(path: str | Path, key: str, default: float) -> float:
    """A non-negative number from the provenance JSON beside a checkpoint (``<name>.json``).

    ``default`` when the file, the key or a valid value is missing.
    """
    prov = Path(path).with_suffix(".json")
    if not prov.is_file():
        return default
    try:
        value = json.loads(prov.read_text(encoding="utf-8")).get(key)
    except (ValueError, AttributeError):
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else default


def training_spacing_mm(path: str | Path, default: float = 1.0) -> float:
    """Voxel size (mm) the network at ``path`` was trained at.

    Read from the provenance JSON beside the checkpoint (key ``input_spacing_mm``,
    as written for the shipped model); ``default`` when there is none.
    """
    value = provenance_number(path, TRAINING_SPACING_KEY, default)
    return value if value > 0 else default


def export_checkpoint(src: str | Path, dst: str | Path, provenance: dict) -> Path:
    """Write a weights-only copy of a training checkpoint plus its provenance JSON.

    This is how ``metstrack/data/stt_demo.pt`` was made from the run recorded in
    ``metstrack/data/stt_demo.json`` (optimizer state dropped: a smaller file
    that :func:`load_checkpoint` reads the same way).

    Args:
        src: A checkpoint of ``metstrack train`` (``best.ckpt``).
        dst: Target ``.pt`` file; the provenance goes beside it as ``.json``.
        provenance: Commands, config and scores that produced ``src``.

    Returns:
        ``dst``.
    """
    model, cfg = load_checkpoint(src, map_location="cpu")
    dst = Path(dst)
    save_checkpoint(dst, model, cfg, provenance_file=dst.with_suffix(".json").name)
    write_json_atomic(dst.with_suffix(".json"), provenance)
    return dst
