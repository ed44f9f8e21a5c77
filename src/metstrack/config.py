"""Typed configuration: dataclasses loaded from TOML (or dicts), unknown keys rejected.

Every command's settings are a (possibly nested) frozen dataclass. Values come
from the dataclass defaults, then a TOML file, then CLI overrides given as
dotted keys (``"optim.lr=3e-4"``). Unknown keys raise :class:`ConfigError`
with a did-you-mean hint, and the resolved config is written next to outputs
with :func:`save_config`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from metstrack import __version__
from metstrack.core.atomic import write_json_atomic
from metstrack.errors import ConfigError, did_you_mean

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses.

    Args:
        cls: A dataclass type.
        data: Keys are field names; values are converted to the field's type
            (tuples from lists, nested dataclasses from tables, floats from ints).
        where: Name of the source used in error messages (a file, a section).

    Raises:
        ConfigError: Unknown key (with the valid keys and a suggestion) or a
            value that cannot be converted.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; {did_you_mean(key, fields)}")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: cannot use {value!r} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, found {value!r}")
        return from_dict(tp, value, where=where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {value!r} is not allowed; {did_you_mean(str(value), args, sort=False)}"
            )
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, found {len(value)}")
            return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        seq = [_convert(inner, v, where) for v in value]
        return tuple(seq) if (origin is tuple or tp is tuple) else seq
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, found {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, found {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, found {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, found {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
) -> T:
    """Load ``cls`` from defaults, an optional TOML file, ``key=value`` overrides, then values.

    Args:
        cls: The config dataclass.
        path: A TOML file, or ``None`` for defaults only.
        overrides: Dotted ``section.key=value`` strings; values are parsed as TOML
            scalars/arrays when possible (``lr=3e-4``, ``shape=[48,48,48]``), else strings.
        values: Typed values by dotted key (``{"optim.lr": 3e-4}``), applied last;
            ``None`` values are skipped, so unset CLI options pass straight through.

    Raises:
        ConfigError: Unreadable TOML, unknown key, bad value.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Cfg:
        ...     lr: float = 1e-3
        ...     mode: str = "overlap"
        >>> load_config(Cfg, overrides=["lr=3e-4"], values={"mode": "brats", "lr": None})
        Cfg(lr=0.0003, mode='brats')
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    apply_overrides(data, overrides)
    for key, value in (values or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    return from_dict(cls, data, where=where)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections as needed.

    Raises:
        ConfigError: A part of the key names a value, not a section.
    """
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {p!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw config dict (in place; returned).

    Values are parsed as TOML scalars/arrays when possible (``lr=3e-4``,
    ``shape=[48,48,48]``), else kept as strings.

    Raises:
        ConfigError: An override without ``=`` or through a non-section.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        try:
            set_dotted(data, key, value)
        except ConfigError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (paths as strings, tuples as lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def save_config(cfg: Any, path: str | Path, **extra: Any) -> Path:
    """Write the resolved config as JSON (atomically), with metstrack's version and ``extra``."""
    payload = {"metstrack_version": __version__, "config": to_dict(cfg), **extra}
    return write_json_atomic(path, payload)


def config_fingerprint(cfg: Any) -> str:
    """A short stable hash of a config's contents (for cache keys and provenance)."""
    import hashlib

    text = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
