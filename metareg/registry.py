"""Frozen specs for everything a plugin can register, and the registry that holds them.

A spec is attached to a class by a decorator (:func:`algorithm`, :func:`combiner`,
:func:`benchmark`, :func:`backbone`) but becomes visible only when a plugin's registration hook
passes the class to ``register``: nothing registers at import time.  The registry records which
plugin and package registered each name; a name registered twice is an error naming both.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from .errors import DuplicateNameError, PluginError, UnknownNameError, did_you_mean

__all__ = [
    "AlgorithmSpec",
    "BenchmarkSpec",
    "BackboneSpec",
    "Registry",
    "algorithm",
    "combiner",
    "benchmark",
    "backbone",
    "SPEC_ATTR",
]

SPEC_ATTR = "__metareg_spec__"
Kind = Literal["meta", "multitask"]
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _check_name(name: str) -> str:
    ok = name and name.replace("_", "a").isalnum() and name == name.lower() and name[0].isalpha()
    if not ok:
        raise PluginError(f"registry names are lowercase snake_case (like 'meta_sgd'), got {name!r}.")
    return name


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """A learner (``role='learner'``) or a multi-task combiner (``role='combiner'``)."""

    name: str
    kind: Kind
    family: str
    summary: str
    paper: str
    config: type
    factory: Callable[..., Any]
    role: Literal["learner", "combiner"] = "learner"
    requires: frozenset[str] = frozenset()
    run_defaults: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _EMPTY)
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=lambda: _EMPTY)
    plugin: str = ""
    package: str = ""

    category = "algorithm"


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """A task distribution; ``provides`` are the capabilities learners may require
    (``episodic``: meta-batches of new tasks; ``fixed_tasks``: M training tasks with ids)."""

    name: str
    summary: str
    config: type
    factory: Callable[..., Any]
    provides: frozenset[str] = frozenset()
    metric: str = "mse"
    paper: str = ""
    #: hyperparameter defaults suggested to algorithms whose config has the field (presets and
    #: --set override them), e.g. a larger inner learning rate on images
    algorithm_defaults: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _EMPTY)
    plugin: str = ""
    package: str = ""

    category = "benchmark"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A network factory ``factory(input_shape, output_dim, **options) -> FunctionalNet``."""

    name: str
    summary: str
    factory: Callable[..., Any]
    paper: str = ""
    plugin: str = ""
    package: str = ""

    category = "backbone"


def _attach(spec_factory: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def deco(obj: Any) -> Any:
        setattr(obj, SPEC_ATTR, spec_factory(obj))
        return obj

    return deco


def algorithm(
    name: str,
    *,
    kind: Kind,
    family: str,
    summary: str,
    paper: str,
    config: type,
    requires: Iterable[str] = (),
    run_defaults: Mapping[str, Any] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Any], Any]:
    """Attach an :class:`AlgorithmSpec` to a learner class (``factory(config, context)``)."""
    return _attach(
        lambda cls: AlgorithmSpec(
            name=_check_name(name), kind=kind, family=family, summary=summary, paper=paper,
            config=config, factory=cls, requires=frozenset(requires),
            run_defaults=MappingProxyType(dict(run_defaults or {})),
            presets=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in (presets or {}).items()}),
        )
    )


def combiner(name: str, *, family: str, summary: str, paper: str, config: type) -> Callable[[Any], Any]:
    """Attach a combiner spec (multi-task loss weighting or gradient aggregation) to a class."""
    return _attach(
        lambda cls: AlgorithmSpec(
            name=_check_name(name), kind="multitask", family=family, summary=summary, paper=paper,
            config=config, factory=cls, role="combiner",
        )
    )


def benchmark(
    name: str, *, summary: str, config: type, provides: Iterable[str], metric: str, paper: str = "",
    algorithm_defaults: Mapping[str, Any] | None = None,
) -> Callable[[Any], Any]:
    """Attach a :class:`BenchmarkSpec` to a task-distribution class (``factory(config)``)."""
    return _attach(
        lambda cls: BenchmarkSpec(
            name=_check_name(name), summary=summary, config=config, factory=cls,
            provides=frozenset(provides), metric=metric, paper=paper,
            algorithm_defaults=MappingProxyType(dict(algorithm_defaults or {})),
        )
    )


def backbone(name: str, *, summary: str, paper: str = "") -> Callable[[Any], Any]:
    """Attach a :class:`BackboneSpec` to a network factory function."""
    return _attach(lambda fn: BackboneSpec(name=_check_name(name), summary=summary, factory=fn, paper=paper))


_CATEGORIES = ("algorithm", "benchmark", "backbone")


class Registry:
    """Name -> spec, per category, with provenance and duplicate detection."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, Any]] = {c: {} for c in _CATEGORIES}
        self._clashes: dict[tuple[str, str], list[str]] = {}

    def add(self, obj: Any, *, category: str, plugin: str, package: str) -> Any:
        spec = obj if dataclasses.is_dataclass(obj) and hasattr(obj, "category") else getattr(obj, SPEC_ATTR, None)
        if spec is None:
            raise PluginError(
                f"plugin '{plugin}' registered {obj!r}, which carries no metareg spec: decorate it with "
                f"@metareg.{category} (or @metareg.combiner) first."
            )
        if spec.category != category:
            raise PluginError(
                f"plugin '{plugin}' passed {spec.category} '{spec.name}' to register_{category}s; "
                f"register it from register_{spec.category}s instead."
            )
        spec = dataclasses.replace(spec, plugin=plugin, package=package)
        table = self._specs[category]
        old = table.get(spec.name)
        if old is not None:
            owners = self._clashes.setdefault((category, spec.name), [_owner(old)])
            owners.append(_owner(spec))
            raise DuplicateNameError(
                f"{category} '{spec.name}' is registered by two plugins: {_owner(old)} and {_owner(spec)}. "
                "Uninstall or disable one of them (METAREG_DISABLE_PLUGINS=name)."
            )
        table[spec.name] = spec
        return spec

    def get(self, category: str, name: str) -> Any:
        """The spec registered as ``name``; ``name.tag`` selects a preset of an algorithm."""
        base, _, tag = name.partition(".")
        clash = self._clashes.get((category, base))
        if clash:
            raise DuplicateNameError(
                f"{category} '{base}' is ambiguous: registered by {' and '.join(clash)}. "
                "Disable one with METAREG_DISABLE_PLUGINS=name."
            )
        table = self._specs[category]
        spec = table.get(base)
        if spec is None:
            known = sorted(table)
            raise UnknownNameError(
                f"unknown {category} '{name}'." + did_you_mean(base, known)
                + (f" Known: {', '.join(known)}." if known else " None is registered.")
                + " See `metareg list`."
            )
        if tag:
            presets = getattr(spec, "presets", {})
            if tag not in presets:
                raise UnknownNameError(
                    f"{category} '{base}' has no preset '{tag}'."
                    + did_you_mean(tag, presets)
                    + (f" Presets: {', '.join(sorted(presets))}." if presets else " It defines no presets.")
                )
        return spec

    def preset(self, name: str) -> Mapping[str, Any]:
        tag = name.partition(".")[2]
        return self.get("algorithm", name).presets[tag] if tag else {}

    def list(self, category: str, pattern: str | None = None, **where: Any) -> list[Any]:
        """Specs sorted by name, filtered by a glob or substring ``pattern`` and exact attributes."""
        out = []
        for name, spec in sorted(self._specs[category].items()):
            if pattern and not (fnmatch.fnmatch(name, pattern) or pattern in name):
                continue
            if any(v is not None and getattr(spec, k) != v for k, v in where.items()):
                continue
            out.append(spec)
        return out

    def names(self, category: str) -> list[str]:
        return sorted(self._specs[category])


def _owner(spec: Any) -> str:
    return f"plugin '{spec.plugin}' (package {spec.package or '?'})"
