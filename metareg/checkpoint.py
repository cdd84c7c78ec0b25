"""What a checkpoint holds, and the checks that a checkpoint belongs to the run resuming it.

A checkpoint taken after outer step ``k`` holds everything the next step depends on: the
learner's parameters and buffers (combiner state and combiner generators included, through the
learner's ``state_dict``), the optimizer's state, every random-number generator (torch's global
CPU and CUDA generators, the learner's generator, the task sampler's generator, numpy's and
Python's), the loop's counters and running averages, and the length of ``metrics.jsonl`` at that
moment.  Resuming from it replays steps ``k+1 ...`` exactly as an uninterrupted run would.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import IncompatibleError, OutputError

__all__ = ["FORMAT", "capture_rng", "restore_rng", "load_checkpoint", "check_compatible"]

#: bumped when the layout of a checkpoint changes incompatibly
FORMAT = 2


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": repr(random.getstate()),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    _numpy_restore(state["numpy"])
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_restore(s: Mapping[str, Any]) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, loaded without executing code (``weights_only``); a torn, foreign
    or crafted file is an :class:`OutputError` naming it."""
    try:
        # TorchVersion: checkpoints written before the config stored the version as a plain str
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: say which and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OutputError(f"cannot restore {path}: {first}") from None
    if not isinstance(state, dict) or not isinstance(state.get("learner"), dict):
        raise OutputError(f"cannot restore {path}: not a metareg checkpoint (no learner state).")
    step = state.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise OutputError(f"cannot restore {path}: its step {step!r} is not a step count.")
    return state


def check_compatible(state: Mapping[str, Any], config: Mapping[str, Any], path: Path, version: str) -> None:
    """Refuse a checkpoint of another algorithm, benchmark, configuration or metareg version,
    naming the difference."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise IncompatibleError(f"{path} holds no run configuration; it was not written by `metareg run`.")
    for key in ("algorithm", "benchmark"):
        if saved.get(key) != config.get(key):
            raise IncompatibleError(f"{path} is a checkpoint of {key} {saved.get(key)!r}, but this run is "
                                    f"{key} {config.get(key)!r}; resume it with its own run folder.")
    mine, theirs = _minor(version), _minor(str(saved.get("metareg_version", "")))
    if mine != theirs:
        raise IncompatibleError(f"{path} was written by metareg {saved.get('metareg_version')!r}, this is {version}; "
                                "checkpoints resume only within one minor version.")
    if state.get("format", 1) != FORMAT:
        raise IncompatibleError(f"{path} has checkpoint format {state.get('format', 1)}, this metareg reads format "
                                f"{FORMAT}; it can be evaluated (`metareg eval`) but not resumed.")
    for section in ("algorithm_config", "benchmark_config", "run_config", "combiner_config"):
        a, b = saved.get(section) or {}, config.get(section) or {}
        diff = sorted(k for k in set(a) | set(b) if _plain(a.get(k)) != _plain(b.get(k)))
        if diff:
            k = diff[0]
            raise IncompatibleError(f"{path} was trained with {section.removesuffix('_config')}.{k}={a.get(k)!r}, "
                                    f"this run has {b.get(k)!r}; a checkpoint resumes only the same configuration.")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])
