"""Optional dependencies behind pip extras, and the one-line error when one is missing.

metstrack's base install carries what the demo needs; heavier parts a user may
not need are extras (``pip install "metstrack[search]"``). A module that needs
one imports it through :func:`require`, so a missing extra fails with one line
naming what to install instead of a bare ``ModuleNotFoundError``.

>>> require("json", extra="none", feature="this example").__name__
'json'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from metstrack.errors import MissingExtraError

#: Extras that metstrack imports through :func:`require` -> the modules they install
#: (kept in step with pyproject.toml; ``cluster`` is only for launching clusters).
EXTRAS: dict[str, tuple[str, ...]] = {
    "search": ("optuna",),
    "seg": ("highdicom",),
}


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise one line naming the extra that installs it.

    Args:
        module: Importable module name (``"optuna"``).
        extra: The metstrack extra that installs it (``"search"``).
        feature: What needs it, as the user knows it (``"metstrack search"``).

    Raises:
        MissingExtraError: ``module`` is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs {module}, which is not installed; "
            f'install the extra: pip install "metstrack[{extra}]"'
        ) from exc
