"""Resume a prediction run only into outputs made by the same model and settings.

A prediction root holds ``predict_config.json`` with a ``run_fingerprint``: a
hash of the checkpoint file's bytes and of every setting that changes the
outputs (window, overlap, flips, threshold, output grid, dataset). Finished
studies are kept on a rerun only when the fingerprint matches; otherwise the
run is refused, or, with ``overwrite``, the previous predictions are removed
first, so a folder never mixes the masks of two models or two thresholds.
Temporary files a killed run left there are removed first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metstrack.core import schema
from metstrack.core.atomic import sweep_stale_temps
from metstrack.errors import DatasetError

log = logging.getLogger(__name__)

#: Resolved settings written beside the predictions.
PREDICT_CONFIG = "predict_config.json"
#: Key of the fingerprint in :data:`PREDICT_CONFIG`.
FINGERPRINT_KEY = "run_fingerprint"


def run_fingerprint(checkpoint_sha: str, settings: Mapping[str, Any]) -> str:
    """A short hash of the checkpoint's bytes and the output-changing ``settings``."""
    text = json.dumps(
        {"checkpoint_sha256": checkpoint_sha, **settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def has_predictions(out_root: str | Path) -> bool:
    """True when ``out_root`` holds at least one finished study (a ``lesions.csv``)."""
    base = Path(out_root) / schema.PREDICTIONS_DIR
    return base.is_dir() and any(base.rglob(schema.PREDICTION_LESIONS))


def saved_fingerprint(out_root: str | Path) -> str | None:
    """The ``run_fingerprint`` recorded in ``out_root``'s config, or ``None``."""
    saved = Path(out_root) / PREDICT_CONFIG
    if not saved.is_file():
        return None
    try:
        return json.loads(saved.read_text(encoding="utf-8")).get(FINGERPRINT_KEY)
    except (ValueError, AttributeError):
        return None


def prepare_prediction_root(out_root: str | Path, fingerprint: str, *, overwrite: bool) -> None:
    """Check that a run with ``fingerprint`` may resume into ``out_root``.

    Args:
        out_root: The prediction root (``--out``).
        fingerprint: :func:`run_fingerprint` of the new run.
        overwrite: Remove previous predictions made with other settings instead of
            refusing (only ``predictions/`` and :data:`PREDICT_CONFIG` are removed).

    Raises:
        DatasetError: ``out_root`` holds predictions of another checkpoint or other
            settings (or of an unrecorded run) and ``overwrite`` is false.
    """
    out = Path(out_root)
    sweep_stale_temps(out)  # temporary files of a killed run
    if not has_predictions(out):
        return
    saved = out / PREDICT_CONFIG
    if saved_fingerprint(out) == fingerprint:
        return
    if not overwrite:
        why = f"see {saved}" if saved.is_file() else f"{PREDICT_CONFIG} is missing"
        raise DatasetError(
            f"{out}: already holds predictions made with another checkpoint or other settings "
            f"({why}); rerun with the same checkpoint and settings to resume, pass --overwrite "
            "to replace them, or choose a new --out"
        )
    log.warning("%s: removing predictions made with another checkpoint or settings", out)
    shutil.rmtree(out / schema.PREDICTIONS_DIR)
    saved.unlink(missing_ok=True)
