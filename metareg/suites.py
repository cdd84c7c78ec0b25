"""Named comparison suites: ``metareg compare --suite paradigms -b B`` asks the paradigm question
without knowing the algorithms' names.

Suites come from the ``register_suites(register)`` hook, like every other extension point; the
built-in ``paradigms`` suite is a plugin (``plugins/suites.py``) registered the same way a third
party's would be.  A suite is resolved per benchmark: each slot takes the first of its candidates
that is installed and runs on the benchmark, and a slot nobody fills is said in the report
(``notes``) rather than failing the comparison.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError, UnknownNameError, did_you_mean
from .plugins import PluginManager, get_manager

__all__ = ["Suite", "ResolvedSuite", "suites", "get_suite", "resolve_suite"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    #: label -> candidate algorithm names in order of preference ("family:F": any learner of family F)
    slots: tuple[tuple[str, tuple[str, ...]], ...]
    #: benchmark asked for -> benchmark run on
    benchmarks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: "ALGO.key" -> value, applied when ALGO is in the suite's choice
    sets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: benchmark run on -> {"ALGO.key": value}
    benchmark_sets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    plugin: str = "?"
    package: str = "?"


@dataclasses.dataclass(frozen=True)
class ResolvedSuite:
    suite: Suite
    benchmark: str  # the benchmark the comparison runs on
    algorithms: tuple[str, ...]
    #: label -> the algorithm chosen (None: an empty slot)
    chosen: tuple[tuple[str, str | None], ...]
    sets: dict[str, Any]
    notes: tuple[str, ...]


def _plugin_package(manager: PluginManager, plugin_name: str) -> str:
    info = manager.plugins.get(plugin_name)
    return info.package if info is not None else "?"


def suites(manager: PluginManager | None = None) -> dict[str, Suite]:
    """Every registered suite by name.  A name registered twice keeps the built-in (or the first
    plugin's, by name) and the other is available as ``package:name``, with a warning, as for
    algorithms."""
    m = manager or get_manager()
    m.registry  # plugins load (and report their problems) before their suites are asked for
    from .registry import BUILTIN_PACKAGE, package_key

    impls = m.hook.register_suites.get_hookimpls()
    impls = sorted(impls, key=lambda i: (package_key(_plugin_package(m, i.plugin_name)) != BUILTIN_PACKAGE, i.plugin_name))
    out: dict[str, Suite] = {}
    for impl in impls:
        package = _plugin_package(m, impl.plugin_name)
        staged: list[Suite] = []

        def register(name: str, description: str, slots: Mapping[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]],
                     benchmarks: Mapping[str, str] | None = None, sets: Mapping[str, Any] | None = None,
                     benchmark_sets: Mapping[str, Mapping[str, Any]] | None = None,
                     _plugin: str = impl.plugin_name, _package: str = package) -> None:
            if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or name != name.lower():
                raise ConfigError(f"suite names are lowercase snake_case, got {name!r}.")
            items = list(slots.items()) if isinstance(slots, Mapping) else list(slots)
            if not items:
                raise ConfigError(f"suite '{name}' has no slots.")
            norm = []
            for label, cands in items:
                if isinstance(cands, str):
                    cands = (cands,)
                if not all(isinstance(c, str) and c for c in cands):
                    raise ConfigError(f"suite '{name}', slot '{label}': candidates are algorithm names, got {cands!r}.")
                norm.append((str(label), tuple(cands)))
            for key in (sets or {}):
                if "." not in key:
                    raise ConfigError(f"suite '{name}': sets keys are ALGO.key, got {key!r}.")
            staged.append(Suite(name, description, tuple(norm), dict(benchmarks or {}), dict(sets or {}),
                                {b: dict(v) for b, v in (benchmark_sets or {}).items()}, _plugin, _package))

        try:
            impl.function(register=register)
        except Exception as e:  # noqa: BLE001 - one broken plugin must not hide the other suites
            log.warning("plugin '%s' (%s) failed to register its suites: %s", impl.plugin_name, package,
                        e if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}")
            continue
        for s in staged:
            if s.name in out:
                qualified = f"{package_key(package)}:{s.name}"
                log.warning("suite '%s' of plugin '%s' (%s) is already registered by '%s' (%s); yours is '%s'.",
                            s.name, s.plugin, package, out[s.name].plugin, out[s.name].package, qualified)
                out[qualified] = dataclasses.replace(s, name=qualified)
            else:
                out[s.name] = s
    return out


def get_suite(name: str, manager: PluginManager | None = None) -> Suite:
    every = suites(manager)
    if name not in every:
        raise UnknownNameError(f"no suite named '{name}'." + did_you_mean(name, every)
                               + f" Suites: {', '.join(sorted(every)) or 'none installed'} (`metareg list --suites`).")
    return every[name]


def resolve_suite(suite: Suite, benchmark: str, manager: PluginManager | None = None) -> ResolvedSuite:
    """The algorithms of ``suite`` for ``benchmark``: per slot the first installed candidate that
    runs on the benchmark the suite maps it to."""
    m = manager or get_manager()
    reg = m.registry
    bench_name = suite.benchmarks.get(benchmark, benchmark)
    bench = reg.get("benchmark", bench_name)
    notes: list[str] = []
    if bench_name != benchmark:
        notes.append(f"suite '{suite.name}' runs '{benchmark}' as '{bench_name}' ({bench.summary}): "
                     "the same task family with fixed training tasks, so multi-task learners can train on it "
                     "and every learner is scored on tasks seen in training as well as on new ones.")
    learners = [s for s in reg.list("algorithm") if s.role == "learner"]
    chosen: list[tuple[str, str | None]] = []
    algorithms: list[str] = []
    for label, cands in suite.slots:
        names: list[str] = []
        for c in cands:
            if c.startswith("family:"):
                fam = c.removeprefix("family:")
                names += [reg.ref(s) for s in learners if s.family == fam]
            else:
                names.append(c)
        names = list(dict.fromkeys(names))
        pick = None
        skipped = []
        for n in names:
            try:
                spec = reg.get("algorithm", n)
            except UnknownNameError:
                skipped.append(f"{n} (not installed)")
                continue
            if spec.role != "learner":
                skipped.append(f"{n} (a combiner)")
                continue
            missing = spec.requires - bench.provides
            if missing:
                skipped.append(f"{n} (needs {', '.join(sorted(missing))})")
                continue
            if n in algorithms:
                continue
            pick = n
            break
        chosen.append((label, pick))
        if pick is None:
            why = "; ".join(skipped) if skipped else "no candidate is installed"
            notes.append(f"slot '{label}' is empty on {bench_name}: {why}.")
        else:
            algorithms.append(pick)
            if skipped:
                notes.append(f"slot '{label}': {pick} (skipped {'; '.join(skipped)}).")
    if not algorithms:
        raise ConfigError(f"suite '{suite.name}' has no algorithm that runs on {bench_name}.")
    sets: dict[str, Any] = {}
    for key, value in {**suite.sets, **suite.benchmark_sets.get(bench_name, {})}.items():
        if key.partition(".")[0] in algorithms:
            sets[key] = value
    return ResolvedSuite(suite, bench_name, tuple(algorithms), tuple(chosen), sets, tuple(notes))
