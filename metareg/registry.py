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
    "KINDS",
    "FAMILIES",
    "CAPABILITIES",
    "spec_of",
    "validate_spec",
    "check_config_class",
]

SPEC_ATTR = "__metareg_spec__"
Kind = Literal["meta", "multitask"]
_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: the values a spec may use; a plugin using anything else is refused when it registers.
KINDS: Mapping[str, str] = MappingProxyType({
    "meta": "learns to adapt to new tasks from a few examples (meta-learning)",
    "multitask": "learns M fixed tasks jointly, adapts to new ones through its shared encoder",
})
FAMILIES: Mapping[str, str] = MappingProxyType({
    "optimization": "meta-learning by gradient steps on the support set (MAML family)",
    "metric": "meta-learning by comparing queries with the support set in an embedding",
    "model": "meta-learning by a network that reads the support set in one forward pass",
    "hybrid": "multi-task pre-training followed by meta-learning",
    "architecture": "multi-task parameter sharing (how the tasks share a network)",
    "weighting": "multi-task loss weighting (a combiner acting on the task losses)",
    "gradient": "multi-task gradient aggregation (a combiner acting on the task Jacobian)",
})
#: capabilities a benchmark ``provides`` and a learner ``requires``.  A plugin may add its own as
#: ``package.capability`` (a dotted name), so two packages can agree on one without metareg.
CAPABILITIES: Mapping[str, str] = MappingProxyType({
    "episodic": "samples meta-batches of new tasks with support and query sets (train_batch, eval_batch)",
    "fixed_tasks": "has M training tasks with ids (task_ids in its batches; train_tasks_batch for seen-task scores)",
    "classification": "targets are class indices (loss cross_entropy, metric accuracy)",
})


def spec_of(obj: Any) -> Any:
    """The spec attached to ``obj`` itself.  Read from the class's own ``__dict__``: a subclass of a
    registered class is not registered until it is decorated itself (it would otherwise register
    under its parent's name with its parent's factory)."""
    if isinstance(obj, type):
        return obj.__dict__.get(SPEC_ATTR)
    return getattr(obj, SPEC_ATTR, None)


def _known(values: Iterable[str], vocabulary: Mapping[str, str], what: str, where: str) -> None:
    for v in values:
        if v in vocabulary or ("." in v and all(part.replace("_", "a").isalnum() for part in v.split("."))):
            continue
        raise PluginError(f"{where}: unknown {what} {v!r}." + did_you_mean(str(v), vocabulary)
                          + f" Known: {', '.join(vocabulary)} (or a dotted 'package.name' of your own).")


def check_config_class(config: Any, where: str) -> None:
    """A config is a dataclass *type* (made by :func:`metareg.config`) whose defaults are valid:
    every field has a default of its declared type, inside its bounds."""
    from .errors import ConfigError

    if not isinstance(config, type):
        raise PluginError(f"{where}: config must be a class decorated with @metareg.config, got an instance of "
                          f"{type(config).__name__}; pass the class (config={type(config).__name__}).")
    if not dataclasses.is_dataclass(config):
        raise PluginError(f"{where}: config {config.__name__} is not a dataclass; decorate it with @metareg.config.")
    missing = [f.name for f in dataclasses.fields(config)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise PluginError(f"{where}: config {config.__name__} field(s) {', '.join(missing)} have no default; "
                          "give each a default with metareg.param(default, doc).")
    try:
        config()
    except ConfigError as e:
        raise PluginError(f"{where}: a default of config {config.__name__} is invalid: {e} "
                          "Fix the default in metareg.param(...) (the user did nothing wrong).") from None
    except Exception as e:  # noqa: BLE001 - a __post_init__ that fails on its own defaults
        raise PluginError(f"{where}: config {config.__name__}() with its defaults raised "
                          f"{type(e).__name__}: {e}") from None


def validate_spec(spec: Any) -> None:
    """The checks made when a spec is registered (never at run time)."""
    where = f"{spec.category} '{spec.name}'"
    _check_name(spec.name)
    if spec.category == "algorithm":
        if spec.kind not in KINDS:
            raise PluginError(f"{where}: kind must be one of {', '.join(map(repr, KINDS))}, got {spec.kind!r}."
                              + did_you_mean(str(spec.kind), KINDS))
        if spec.family not in FAMILIES:
            raise PluginError(f"{where}: unknown family {spec.family!r}." + did_you_mean(str(spec.family), FAMILIES)
                              + f" Known: {', '.join(FAMILIES)}.")
        _known(spec.requires, CAPABILITIES, "required capability", where)
        check_config_class(spec.config, where)
        for tag, values in spec.presets.items():
            _check_name(tag)
            names = {f.name for f in dataclasses.fields(spec.config)}
            bad = [k for k in values if k not in names]
            if bad:
                raise PluginError(f"{where}: preset '{tag}' sets {', '.join(bad)}, not fields of {spec.config.__name__}.")
        if not callable(spec.factory):
            raise PluginError(f"{where}: its factory {spec.factory!r} is not callable.")
    elif spec.category == "benchmark":
        _known(spec.provides, CAPABILITIES, "capability", where)
        check_config_class(spec.config, where)
    elif spec.category == "backbone" and not callable(spec.factory):
        raise PluginError(f"{where}: its factory {spec.factory!r} is not callable.")


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
        # the decorated object carries the spec; validation happens when a hook registers it
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
#: the distribution whose plugins win a name clash
BUILTIN_PACKAGE = "metareg"


def package_key(package: str) -> str:
    """Distribution names compare like pip compares them: case and ``-_.`` do not matter."""
    return package.lower().replace("_", "-").replace(".", "-")


class Registry:
    """Name -> spec, per category, with provenance and clash handling.

    Every accepted spec is reachable as ``package:name`` (``metareg-example:linear``).  The bare
    name goes to the built-in spec when a third-party package registers a built-in's name (the
    third party's is then reachable only qualified); two third-party packages registering one name
    leave the bare name ambiguous until the user qualifies it.
    """

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, Any]] = {c: {} for c in _CATEGORIES}
        self._all: dict[str, dict[tuple[str, str], Any]] = {c: {} for c in _CATEGORIES}
        self._clashes: dict[tuple[str, str], list[Any]] = {}

    # -- registration ----------------------------------------------------------------------
    def prepare(self, obj: Any, *, category: str, plugin: str, package: str) -> Any:
        """The validated spec ``obj`` carries, stamped with its owner; changes nothing yet."""
        spec = obj if dataclasses.is_dataclass(obj) and hasattr(obj, "category") else spec_of(obj)
        if spec is None:
            inherited = getattr(obj, SPEC_ATTR, None)
            hint = (f" It inherits the spec of '{inherited.name}' from a base class, which is not its own: "
                    f"decorate {getattr(obj, '__name__', obj)} itself with its own name."
                    if inherited is not None else "")
            raise PluginError(
                f"plugin '{plugin}' registered {obj!r}, which carries no metareg spec: decorate it with "
                f"@metareg.{category} (or @metareg.combiner) first.{hint}"
            )
        if spec.category != category:
            raise PluginError(
                f"plugin '{plugin}' passed {spec.category} '{spec.name}' to register_{category}s; "
                f"register it from register_{spec.category}s instead."
            )
        validate_spec(spec)
        return dataclasses.replace(spec, plugin=plugin, package=package)

    def commit(self, spec: Any) -> str | None:
        """Make a prepared spec visible.  Returns a warning when its bare name went to another spec."""
        category, name = spec.category, spec.name
        key = (package_key(spec.package), name)
        everything = self._all[category]
        if key in everything:
            raise DuplicateNameError(f"{category} '{name}' is registered twice by package {spec.package} "
                                     f"({_owner(everything[key])} and {_owner(spec)}).")
        everything[key] = spec
        table = self._specs[category]
        clash = self._clashes.get((category, name))
        if clash is not None:
            clash.append(spec)
            return (f"{category} '{name}' is also registered by {_owner(spec)}; the name stays ambiguous: "
                    f"choose one as {' or '.join(repr(self.qualified(s)) for s in clash)}.")
        old = table.get(name)
        if old is None:
            table[name] = spec
            return None
        builtin_old = package_key(old.package) == BUILTIN_PACKAGE
        builtin_new = package_key(spec.package) == BUILTIN_PACKAGE
        if builtin_new and not builtin_old:
            table[name] = spec
            old, spec = spec, old
        if builtin_old or builtin_new:
            return (f"{category} '{name}' of {_owner(spec)} clashes with the built-in of {_owner(old)}; "
                    f"'{name}' stays the built-in, use '{self.qualified(spec)}' to choose the other.")
        del table[name]
        self._clashes[(category, name)] = [old, spec]
        return (f"{category} '{name}' is registered by two plugins: {_owner(old)} and {_owner(spec)}; "
                f"choose one as '{self.qualified(old)}' or '{self.qualified(spec)}'.")

    def add(self, obj: Any, *, category: str, plugin: str, package: str) -> Any:
        """Prepare and commit in one call (tests, and hand-built registries)."""
        spec = self.prepare(obj, category=category, plugin=plugin, package=package)
        self.commit(spec)
        return spec

    # -- lookup -------------------------------------------------------------------------------
    @staticmethod
    def qualified(spec: Any) -> str:
        return f"{spec.package}:{spec.name}"

    def ref(self, spec: Any) -> str:
        """The shortest name that selects ``spec``: its bare name when that resolves to it."""
        return spec.name if self._specs[spec.category].get(spec.name) is spec else self.qualified(spec)

    def get(self, category: str, name: str) -> Any:
        """The spec registered as ``name``; ``package:name`` chooses one package's spec;
        ``name.tag`` selects a preset of an algorithm."""
        package, colon, rest = name.rpartition(":")
        base, _, tag = rest.partition(".")
        if colon:
            spec = self._all[category].get((package_key(package), base))
            if spec is None:
                spec = next((s for (_, n), s in self._all[category].items() if n == base and s.plugin == package), None)
            if spec is None:
                owners = [self.qualified(s) for (_, n), s in self._all[category].items() if n == base]
                raise UnknownNameError(
                    f"no package '{package}' registers {category} '{base}'."
                    + (f" Registered as: {', '.join(owners)}." if owners else " See `metareg list`."))
        else:
            clash = self._clashes.get((category, base))
            if clash:
                raise DuplicateNameError(
                    f"{category} '{base}' is ambiguous: registered by {' and '.join(_owner(s) for s in clash)}. "
                    f"Choose one: {', '.join(repr(self.qualified(s)) for s in clash)}."
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
        tag = name.rpartition(":")[2].partition(".")[2]
        return self.get("algorithm", name).presets[tag] if tag else {}

    def list(self, category: str, pattern: str | None = None, **where: Any) -> list[Any]:
        """Every registered spec (the shadowed ones too) sorted by name, filtered by a glob or
        substring ``pattern`` and exact attributes."""
        out = []
        for spec in sorted(self._all[category].values(), key=lambda s: (s.name, self.ref(s) != s.name, s.package)):
            name = spec.name
            if pattern and not (fnmatch.fnmatch(name, pattern) or pattern in name or pattern in self.qualified(spec)):
                continue
            if any(v is not None and getattr(spec, k) != v for k, v in where.items()):
                continue
            out.append(spec)
        return out

    def names(self, category: str) -> list[str]:
        """Bare names that resolve (or are ambiguous): what a user may type unqualified."""
        return sorted(set(self._specs[category]) | {n for (c, n) in self._clashes if c == category})


def _owner(spec: Any) -> str:
    return f"plugin '{spec.plugin}' (package {spec.package or '?'})"
