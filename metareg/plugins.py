"""The plugin manager: built-ins and third-party packages load through one path.

Every plugin is an entry point in the ``metareg`` group (the built-in algorithms are declared in
metareg's own pyproject.toml exactly like a third party declares theirs).  Loading is lazy (the
first call to :func:`get_manager`) and fault-isolated: a plugin that fails to import, declares an
unknown hook, or raises inside a registration hook is recorded with its package, version and
cause, and every other plugin still loads.  ``METAREG_PLUGINS=a,b`` loads only the named entry
points; ``METAREG_DISABLE_PLUGINS=a,b`` skips them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import logging
import os
import traceback
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, MetaregError, PluginError, did_you_mean
from .registry import BUILTIN_PACKAGE, Registry, package_key

__all__ = ["PluginManager", "PluginInfo", "PluginFailure", "get_manager", "get_registry", "reset", "ENTRY_POINT_GROUP"]

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "metareg"
_REGISTRATION_HOOKS = {
    "register_algorithms": "algorithm",
    "register_benchmarks": "benchmark",
    "register_backbones": "backbone",
}


@dataclasses.dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    module: str
    hooks: list[str]
    registered: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PluginFailure:
    name: str
    package: str
    version: str
    stage: str  # "import", "hooks", "register_algorithms", ...
    cause: str
    detail: str = ""

    def line(self) -> str:
        return f"plugin '{self.name}' from {self.package} {self.version} failed at {self.stage}: {self.cause}"


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "metareg_spec", None) is not None]


class PluginManager:
    """pluggy's manager plus provenance, failure isolation and the registry it fills."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._registry: Registry | None = None

    # -- loading -------------------------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        allow = _env_names("METAREG_PLUGINS")
        block = _env_names("METAREG_DISABLE_PLUGINS") or set()
        eps = md.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
        seen: set[str] = set()
        for ep in sorted(eps, key=lambda e: e.name):
            if ep.name in seen:
                # the same distribution visible twice on sys.path (editable + installed) is not a clash
                continue
            seen.add(ep.name)
            if (allow is not None and ep.name not in allow) or ep.name in block:
                log.debug("plugin %s skipped by METAREG_PLUGINS/METAREG_DISABLE_PLUGINS", ep.name)
                continue
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - isolation is the point
                self._fail(ep.name, package, version, "import", e)
                continue
            self.add(obj, name=ep.name, package=package, version=version)

    def add(self, plugin: Any, *, name: str | None = None, package: str = "?", version: str = "?") -> bool:
        """Register one plugin object (module, class or instance); False if it was rejected."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.plugins:
            self._record(PluginFailure(name, package, version, "register", f"a plugin named '{name}' is already loaded from {self.plugins[name].package}"))
            return False
        unknown = self._unknown_hooks(plugin)
        if unknown:
            attr, hint = unknown
            self._record(
                PluginFailure(name, package, version, "hooks",
                              f"'{attr}' is marked @metareg.hookimpl but is not a metareg hook.{hint} "
                              f"Hooks: {', '.join(_hook_names())}. Nothing of this plugin was loaded.")
            )
            return False
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as e:
            self._fail(name, package, version, "hooks", e)
            return False
        hooks = sorted(c.name for c in (self.pm.get_hookcallers(plugin) or []))
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.plugins[name] = PluginInfo(name, package, version, module, hooks)
        self._registry = None
        return True

    def _unknown_hooks(self, plugin: Any) -> tuple[str, str] | None:
        known = _hook_names()
        for attr in dir(plugin):
            try:
                fn = getattr(plugin, attr)
            except Exception:  # noqa: BLE001
                continue
            if getattr(fn, hookspecs.PROJECT + "_impl", None) is not None and attr not in known:
                return attr, did_you_mean(attr, known)
        return None

    def _fail(self, name: str, package: str, version: str, stage: str, exc: BaseException, suffix: str = "") -> None:
        # metareg's own errors carry a message written for the user; anything else gets its type
        cause = str(exc) if isinstance(exc, MetaregError) else f"{type(exc).__name__}: {exc}"
        detail = "".join(traceback.format_exception(exc))
        self._record(PluginFailure(name, package, version, stage, cause + suffix, detail))

    def _record(self, failure: PluginFailure) -> None:
        """The one place a load problem is recorded and reported (once, as a logging warning: the
        CLI shows it as one ``warning:`` line on every command that loads plugins)."""
        self.failures.append(failure)
        log.warning("%s", failure.line())

    # -- registry ------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        reg = Registry()
        impls_by_plugin: dict[str, list[tuple[str, str, Any]]] = {}
        for hook_name, category in _REGISTRATION_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                impls_by_plugin.setdefault(impl.plugin_name, []).append((hook_name, category, impl))
        # built-ins first, so a third-party package can never take a built-in's name
        order = sorted(impls_by_plugin, key=lambda n: (not self._is_builtin(n), n))
        for plugin_name in order:
            info = self.plugins.get(plugin_name)
            package = info.package if info else "?"
            version = info.version if info else "?"
            staged: list[Any] = []
            stage = "register"
            try:
                # all of a plugin's names or none: stage them, validated, and commit only if every
                # registration hook of the plugin succeeded
                for hook_name, category, impl in impls_by_plugin[plugin_name]:
                    stage = hook_name

                    def register(obj: Any, _cat: str = category) -> Any:
                        staged.append(reg.prepare(obj, category=_cat, plugin=plugin_name, package=package))
                        return obj

                    impl.function(**{a: register for a in impl.argnames})
                seen: set[tuple[str, str]] = set()
                for spec in staged:
                    if (spec.category, spec.name) in seen:
                        raise DuplicateNameError(f"it registers {spec.category} '{spec.name}' twice.")
                    seen.add((spec.category, spec.name))
            except Exception as e:  # noqa: BLE001 - isolation is the point
                self._fail(plugin_name, package, version, stage, e,
                           suffix=" Nothing of this plugin was registered." if staged else "")
                continue
            for spec in staged:
                note = reg.commit(spec)
                if note is not None:
                    self._record(PluginFailure(plugin_name, package, version, "name clash", note))
                if info is not None:
                    info.registered.append(f"{spec.category}:{reg.ref(spec)}")
        return reg

    def _is_builtin(self, plugin_name: str) -> bool:
        info = self.plugins.get(plugin_name)
        return info is not None and package_key(info.package) == BUILTIN_PACKAGE

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def raise_failures(self) -> None:
        """Raise a :class:`PluginError` listing every failure (``metareg plugins --strict``)."""
        if self.failures:
            raise PluginError("; ".join(f.line() for f in self.failures))


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide manager, loading entry points on first use."""
    global _MANAGER
    if _MANAGER is None:
        m = PluginManager()
        m.load_entry_points()
        _MANAGER = m
    return _MANAGER


def get_registry() -> Registry:
    return get_manager().registry


def reset(manager: PluginManager | None = None) -> None:
    """Forget the loaded plugins (tests), or install ``manager`` as the process-wide one."""
    global _MANAGER
    _MANAGER = manager


