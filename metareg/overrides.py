"""Override resolution, in one place: ``--set`` strings, TOML files (flat or in tables), the
dedicated flags, ``combiner.KEY`` options, per-algorithm keys in a comparison, and a saved
``config.json`` read back.  The runner, ``compare`` and ``eval`` all go through here.

Overrides arrive as *layers*, later layers winning (a TOML file, then ``--set``, then flags such
as ``--steps``).  Inside one layer a key may be written bare (``shots``) when exactly one section
has it, or qualified (``benchmark.shots``), or in a table (``[benchmark]``); writing the same
setting twice with different values inside one layer is an error, never a silent choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import load_toml, parse_value
from .errors import ConfigError, did_you_mean

__all__ = ["SECTIONS", "Overrides", "parse_sets", "collect_overrides", "resolve_sections", "split_per_algorithm",
           "saved_overrides", "config_dict"]

#: the sections of a run's configuration; ``combiner`` holds a multi-task combiner's own options
SECTIONS = ("algorithm", "benchmark", "run", "combiner")


class Overrides:
    """Ordered layers of overrides; a later layer wins over an earlier one, key by key."""

    def __init__(self, *layers: Mapping[str, Any]) -> None:
        self.layers: tuple[dict[str, Any], ...] = tuple(dict(layer) for layer in layers if layer)

    @classmethod
    def of(cls, overrides: Overrides | Mapping[str, Any] | None) -> Overrides:
        if isinstance(overrides, Overrides):
            return overrides
        return cls(overrides or {})

    def then(self, *layers: Mapping[str, Any]) -> Overrides:
        return Overrides(*self.layers, *layers)

    def keys(self) -> list[str]:
        return [k for layer in self.layers for k in layer]

    def __bool__(self) -> bool:
        return any(self.layers)

    def __repr__(self) -> str:
        return f"Overrides{self.layers!r}"


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``--set key=value`` strings to a dict; the value is parsed as TOML, else kept a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects key=value (like inner_lr=0.05 or benchmark.shots=5), got {item!r}.")
        key = key.strip()
        if " " in value.strip() and "=" in value and not value.strip().startswith(("[", "{", '"', "'")):
            raise ConfigError(f"--set {item!r}: one key=value per --set; write each pair as its own --set "
                              f"(e.g. --set {key}=... --set {value.split()[-1]}).")
        if key in out and out[key] != parse_value(value.strip()):
            raise ConfigError(f"--set {key} is given twice with different values ({out[key]!r} and {value.strip()!r}).")
        out[key] = parse_value(value.strip())
    return out


def collect_overrides(config_file: Path | None, sets: Sequence[str], *, steps: int | None = None,
                      device: str | None = None, seed: int | None = None) -> Overrides:
    """The layers of a command line: the TOML file, then ``--set``, then the dedicated flags."""
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}.")
    flags = {k: v for k, v in (("run.steps", steps), ("run.device", device), ("run.seed", seed)) if v is not None}
    return Overrides(load_toml(config_file) if config_file is not None else {}, parse_sets(sets), flags)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _put(out: dict[str, dict[str, Any]], seen: dict[tuple[str, str], str], section: str, key: str, value: Any,
         spelling: str) -> None:
    prev = seen.get((section, key))
    if prev is not None and out[section][key] != value:
        raise ConfigError(f"'{section}.{key}' is set twice with different values: {prev} = {out[section][key]!r} "
                          f"and {spelling} = {value!r}; keep one.")
    seen[(section, key)] = spelling
    out[section][key] = value


def _resolve_layer(layer: Mapping[str, Any], classes: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {} for s in (*classes, "combiner")}
    seen: dict[tuple[str, str], str] = {}
    fields = {s: _fields(c) for s, c in classes.items()}
    for key, value in layer.items():
        if isinstance(value, dict) and key in out:  # a TOML table ([benchmark]) or a saved section
            for k, v in value.items():
                _put(out, seen, key, k, v, f"[{key}] {k}")
            continue
        section, dot, name = key.partition(".")
        if dot and section in out:
            _put(out, seen, section, name, value, key)
            continue
        if dot:
            raise ConfigError(f"unknown section '{section}' in '{key}'; sections: {', '.join(out)}.")
        owners = [s for s, names in fields.items() if key in names]
        if len(owners) > 1:
            raise ConfigError(f"'{key}' is a hyperparameter of {' and '.join(owners)}; write "
                              + " or ".join(f"'{o}.{key}'" for o in owners) + ".")
        if not owners:
            every = sorted({n for names in fields.values() for n in names})
            raise ConfigError(f"unknown hyperparameter '{key}'." + did_you_mean(key, every)
                              + " Valid keys: " + "; ".join(f"{s}: {', '.join(n)}" for s, n in fields.items()) + ".")
        _put(out, seen, owners[0], key, value, key)
    return out


def resolve_sections(overrides: Overrides | Mapping[str, Any] | None, classes: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """Overrides split into ``classes``' sections (plus ``combiner``, whose keys are checked once
    the combiner is known), later layers winning.  Unknown keys are errors listing the valid ones."""
    out: dict[str, dict[str, Any]] = {s: {} for s in (*classes, "combiner")}
    for layer in Overrides.of(overrides).layers:
        for section, values in _resolve_layer(layer, classes).items():
            out[section].update(values)
    return out


def split_per_algorithm(algorithms: Sequence[str], overrides: Overrides | Mapping[str, Any] | None,
                        algorithm_fields: Mapping[str, Iterable[str]], run_fields: Iterable[str]) -> dict[str, Overrides]:
    """A comparison's shared overrides, per algorithm.

    ``maml.inner_lr=0.05`` goes to maml only; a bare algorithm key (``inner_lr``) goes to every
    algorithm that has it; benchmark, run and combiner keys go to all.  A key no algorithm, the
    benchmark or the runner knows reaches every run, whose resolution then names the valid keys
    (a typo must not silently apply to nothing).
    """
    fields = {a: set(algorithm_fields[a]) for a in algorithms}
    run_fields = set(run_fields)
    per: dict[str, list[dict[str, Any]]] = {a: [] for a in algorithms}
    for layer in Overrides.of(overrides).layers:
        out: dict[str, dict[str, Any]] = {a: {} for a in algorithms}
        for key, value in layer.items():
            head, dot, rest = key.partition(".")
            if isinstance(value, dict) and key in algorithms:  # an [maml] table
                for k, v in value.items():
                    out[key][f"algorithm.{k}"] = v
            elif dot and head in out:
                out[head][rest if rest.partition(".")[0] in SECTIONS else f"algorithm.{rest}"] = value
            elif head == "algorithm" and dot:
                for a in algorithms:
                    if rest in fields[a]:
                        out[a][key] = value
            elif key == "algorithm" and isinstance(value, dict):
                for k, v in value.items():
                    for a in algorithms:
                        if k in fields[a]:
                            out[a][f"algorithm.{k}"] = v
            elif (dot and head in SECTIONS) or (key in SECTIONS and isinstance(value, dict)):
                for a in algorithms:
                    out[a][key] = value
            elif any(key in fields[a] for a in algorithms):
                for a in algorithms:
                    if key in fields[a]:
                        out[a][f"algorithm.{key}"] = value
            elif key in run_fields:
                for a in algorithms:
                    out[a][f"run.{key}"] = value
            else:
                for a in algorithms:
                    out[a][key] = value
        for a in algorithms:
            per[a].append(out[a])
    return {a: Overrides(*layers) for a, layers in per.items()}


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as the plain dict that ``config.json`` stores."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


#: where each section lives in a saved ``config.json``
SAVED_KEYS = {"algorithm": "algorithm_config", "benchmark": "benchmark_config", "run": "run_config",
              "combiner": "combiner_config"}


def saved_overrides(saved: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A saved ``config.json`` as one layer of sectioned overrides (tables, not dotted strings)."""
    layer: dict[str, dict[str, Any]] = {}
    for section, key in SAVED_KEYS.items():
        values = saved.get(key)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config.json: '{key}' must be a table of settings, got {type(values).__name__}.")
        layer[section] = dict(values)
    return layer
