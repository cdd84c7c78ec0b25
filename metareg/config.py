"""Hyperparameter dataclasses: declaration, validation, and overrides from strings and files.

Each algorithm, benchmark and the runner declare a frozen, keyword-only dataclass whose fields are
built with :func:`param`.  The field's type, default and ``doc`` are what ``metareg info``
prints; ``--set key=value`` and TOML files are parsed against the type and checked against the
declared bounds, so a typo or a negative shot count is an error before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, did_you_mean

__all__ = ["param", "config", "ParamInfo", "describe", "build_config", "parse_value", "load_toml"]


def param(
    default: Any,
    doc: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A documented, optionally bounded hyperparameter field."""
    meta = {"doc": doc, "gt": gt, "ge": ge, "le": le, "lt": lt}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) as the default of a config field")
    return dataclasses.field(default=default, metadata=meta)


def config(cls: type) -> type:
    """Class decorator: a frozen keyword-only dataclass whose values are validated on creation."""
    original_post_init = cls.__dict__.get("__post_init__")

    def __post_init__(self: Any) -> None:
        _validate(self)
        if original_post_init is not None:
            original_post_init(self)
        else:
            # run the checks of a config class this one extends
            for base in type(self).__mro__[1:]:
                extra = base.__dict__.get("__metareg_post_init__")
                if extra is not None:
                    extra(self)
                    break

    # dataclass() only calls __post_init__ if it exists when the class is processed
    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    if original_post_init is not None:
        cls.__metareg_post_init__ = original_post_init  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: Any
    doc: str


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"tuple[{_type_name(args[0])}, ...]" if args else "tuple"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def describe(cls_or_obj: Any) -> list[ParamInfo]:
    """Every field of a config class with its type, default and doc."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = _hints(cls)
    return [
        ParamInfo(f.name, _type_name(hints[f.name]), f.default, f.metadata.get("doc", ""))
        for f in dataclasses.fields(cls)
    ]


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless, else raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}."
                + did_you_mean(str(value), [str(c) for c in choices])
            )
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _check_type(name, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}.")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name} must be None, got {value!r}.")
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list like [1, 2], got {value!r}.")
        return tuple(_check_type(name, v, elem) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}.")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}.")
        return value
    return value


def _validate(obj: Any) -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _check_type(f.name, getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)
        m = f.metadata
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for key, ok, word in (
                ("gt", lambda v, b: v > b, "greater than"),
                ("ge", lambda v, b: v >= b, "at least"),
                ("lt", lambda v, b: v < b, "less than"),
                ("le", lambda v, b: v <= b, "at most"),
            ):
                bound = m.get(key)
                if bound is not None and not ok(value, bound):
                    raise ConfigError(f"{f.name} must be {word} {bound}, got {value!r}.")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value, else keep it a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; unreadable or malformed files are a ConfigError naming the path."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory; pass a .toml file.") from None
    except PermissionError:
        raise ConfigError(f"config file {p} is not readable (permission denied).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}.") from None


def build_config(cls: type, overrides: Mapping[str, Any], *, where: str = "") -> Any:
    """Instantiate ``cls`` from its defaults and ``overrides``; unknown keys list the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown hyperparameter '{key}'{' for ' + where if where else ''}."
            + did_you_mean(key, names)
            + f" Valid keys: {', '.join(names)}."
        )
    try:
        return cls(**dict(overrides))
    except ConfigError as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None
