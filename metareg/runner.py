"""The training and evaluation loop: one place for seeds, sampling, the optimizer, logging,
periodic evaluation, checkpoints and observer hooks.

A :class:`Run` is resolved completely (names, hyperparameters, compatibility, output folder)
before anything is written, so bad input never leaves a half-made results folder.  While it
runs, every file in the folder is either absent or complete: JSON files and the checkpoint are
written to a temporary name and renamed, and ``metrics.jsonl`` is appended one flushed line at a
time.  An interrupted run (Ctrl-C, SIGTERM) still writes its checkpoint and a summary whose
``status`` says ``interrupted``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from . import __version__
from .config import build_config, config, param
from .errors import ConfigError, IncompatibleError, OutputError
from .overrides import Overrides, config_dict, resolve_sections, saved_overrides
from .evaluate import evaluate, evaluate_train_tasks, evaluation_generator
from .learners.base import LearnerContext
from .plugins import PluginManager, get_manager

__all__ = ["RunConfig", "Run", "write_json_atomic", "load_run", "make_optimizer"]

log = logging.getLogger(__name__)


@config
class RunConfig:
    steps: int = param(3000, "outer (meta-)training steps (the most, when time_budget_s stops it first)", ge=1)
    time_budget_s: float = param(0.0, "stop training after this many seconds of training steps (0: no time limit); "
                                      "the summary says how many steps were reached", ge=0)
    optimizer: Literal["adam", "sgd"] = param("adam", "outer optimizer (the runner owns it)")
    lr: float = param(1e-3, "outer learning rate", gt=0)
    grad_clip: float = param(0.0, "clip the outer gradient norm at this value (0: off)", ge=0)
    seed: int = param(0, "seed of initialisation, task sampling and evaluation tasks")
    device: str = param("cpu", "torch device: cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "float64"] = param("float32", "floating-point precision")
    eval_steps: tuple[int, ...] = param((0, 1, 10), "adaptation steps after which held-out tasks are scored")
    eval_tasks: int = param(600, "held-out tasks in the final evaluation", ge=1)
    val_every: int = param(500, "evaluate on validation tasks every N steps (0: only at the end)", ge=0)
    val_tasks: int = param(100, "held-out tasks of each periodic evaluation", ge=1)
    eval_chunk: int = param(100, "tasks adapted at once during evaluation (memory bound)", ge=1)
    log_every: int = param(10, "write the training loss to metrics.jsonl every N steps", ge=1)
    checkpoint_every: int = param(0, "also checkpoint every N steps (0: only at the end)", ge=0)

    def __post_init__(self) -> None:
        if any(k < 0 for k in self.eval_steps) or not self.eval_steps:
            raise ConfigError(f"eval_steps must be non-negative step counts like [0, 1, 10], got {list(self.eval_steps)}.")
        if self.device != "cpu" and not self.device.startswith(("cuda", "mps", "xpu")):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}.")


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so the run is saved like after Ctrl-C."""


class Run:
    """A fully resolved run.  Construction validates everything and writes nothing."""

    def __init__(
        self,
        algorithm: str,
        benchmark: str,
        overrides: Overrides | Mapping[str, Any] | None = None,
        *,
        out: str | Path | None = None,
        manager: PluginManager | None = None,
    ) -> None:
        self.manager = manager or get_manager()
        reg = self.manager.registry
        self.algo_spec = reg.get("algorithm", algorithm)
        if self.algo_spec.role != "learner":
            raise IncompatibleError(
                f"'{algorithm}' is a combiner, not a learner: pass it to a multi-task learner, e.g. "
                f"`metareg run hard_sharing --benchmark sinusoid_mtl --set combiner={self.algo_spec.name}`."
            )
        self.bench_spec = reg.get("benchmark", benchmark)
        missing = self.algo_spec.requires - self.bench_spec.provides
        if missing:
            ok = [b.name for b in reg.list("benchmark") if self.algo_spec.requires <= b.provides]
            raise IncompatibleError(
                f"{self.algo_spec.name} needs a benchmark providing {', '.join(sorted(missing))}, which "
                f"'{benchmark}' does not. Compatible benchmarks: {', '.join(ok) or 'none installed'}."
            )
        classes = {"algorithm": self.algo_spec.config, "benchmark": self.bench_spec.config, "run": RunConfig}
        sections = resolve_sections(overrides, classes)
        combiner_over = sections["combiner"]  # checked once the combiner's name is known (it may be overridden)
        run_over = {**self.algo_spec.run_defaults, **sections["run"]}
        algo_fields = {f.name for f in dataclasses.fields(self.algo_spec.config)}
        # a benchmark may suggest defaults (e.g. inner_lr 0.4 on images); presets and --set win.
        # What was applied is said (log) and saved (config.json), never silent.
        preset = reg.preset(algorithm)
        self.suggested = {k: v for k, v in self.bench_spec.algorithm_defaults.items()
                          if k in algo_fields and k not in preset and k not in sections["algorithm"]}
        if self.suggested:
            log.info("benchmark %s suggests %s for %s (override with --set)", self.bench_spec.name,
                     ", ".join(f"{k}={v}" for k, v in self.suggested.items()), self.algo_spec.name)
        algo_over = {**self.suggested, **preset, **sections["algorithm"]}
        self.algo_config = build_config(self.algo_spec.config, algo_over, where=f"algorithm {self.algo_spec.name}")
        self.bench_config = build_config(self.bench_spec.config, sections["benchmark"], where=f"benchmark {self.bench_spec.name}")
        self.config = build_config(RunConfig, run_over, where="run")
        self.combiner_spec = self.combiner_config = None
        if "combiner" in algo_fields:
            self.combiner_spec = reg.get("algorithm", self.algo_config.combiner)
            if self.combiner_spec.role != "combiner":
                raise ConfigError(f"'{self.algo_config.combiner}' is not a combiner; see `metareg list --kind multitask`.")
            self.combiner_config = build_config(self.combiner_spec.config, combiner_over,
                                                where=f"combiner {self.combiner_spec.name}")
        elif combiner_over:
            raise ConfigError(f"{', '.join('combiner.' + k for k in combiner_over)}: '{self.algo_spec.name}' takes no "
                              "combiner; combiner options apply to multi-task learners (e.g. hard_sharing).")
        self.algorithm_name = algorithm
        self.out = Path(out) if out is not None else None
        self.summary: dict[str, Any] = {}
        self.learner = None
        self.bench = None
        self._check_device()

    def _check_device(self) -> None:
        dev = self.config.device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu.")

    # -- output folder -----------------------------------------------------------------------
    def prepare_output(self) -> Path | None:
        if self.out is None:
            return None
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory; choose another path.")
        if out.is_dir() and any(out.iterdir()):
            raise OutputError(f"--out {out} already contains files; choose an empty or new folder so no run is overwritten.")
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out, prefix=".probe"):
                pass
        except OSError as e:
            raise OutputError(f"--out {out} is not writable ({e.strerror or e}); choose a folder you can write to.") from None
        return out

    def resolved_config(self) -> dict[str, Any]:
        return {
            "algorithm": self.algo_spec.name,
            "algorithm_preset": self.algorithm_name,
            "benchmark": self.bench_spec.name,
            # the names that select these specs again (package:name when a bare name is another's)
            "algorithm_ref": self.manager.registry.ref(self.algo_spec),
            "benchmark_ref": self.manager.registry.ref(self.bench_spec),
            "suggested_by_benchmark": dict(self.suggested),
            "algorithm_config": config_dict(self.algo_config),
            "benchmark_config": config_dict(self.bench_config),
            "run_config": config_dict(self.config),
            **({"combiner_config": config_dict(self.combiner_config)} if self.combiner_config is not None else {}),
            "metareg_version": __version__,
            "torch_version": str(torch.__version__),  # a plain str: checkpoints load with weights_only=True
            "plugins": {self.algo_spec.name: f"{self.algo_spec.plugin} ({self.algo_spec.package})",
                        self.bench_spec.name: f"{self.bench_spec.plugin} ({self.bench_spec.package})"},
        }

    # -- building ------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.bench = self.bench_spec.factory(self.bench_config)
        reg = self.manager.registry
        info = self.bench.info

        def make_backbone(name: str | None = None, **options: Any):
            spec = reg.get("backbone", name or info.default_backbone)
            merged = {**dict(info.backbone_options), **options}
            # benchmark-wide options (e.g. transductive batch norm) go only to backbones that have them
            accepted = inspect.signature(spec.factory).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
                merged = {k: v for k, v in merged.items() if k in accepted}
            return spec.factory(info.input_shape, info.output_dim, **merged)

        def make_combiner(name: str, extra: dict[str, Any]):
            spec = reg.get("algorithm", name)
            if spec.role != "combiner":
                raise ConfigError(f"'{name}' is not a combiner; see `metareg list --kind multitask`.")
            cfg_c = self.combiner_config if spec is self.combiner_spec else spec.config()
            return spec.factory(cfg_c, **extra)

        ctx = LearnerContext(task=info, make_backbone=make_backbone,
                             generator=torch.Generator().manual_seed(cfg.seed), device=self.device,
                             dtype=self.dtype, make_combiner=make_combiner)
        self.learner = self.algo_spec.factory(self.algo_config, ctx).to(self.device, self.dtype)
        params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg.optimizer, params, cfg.lr)
        self.num_params = sum(p.numel() for p in params)

    def evaluate(self, num_tasks: int, split: str = "test") -> dict[str, float]:
        """Few-shot evaluation on ``split`` tasks ("val" during training, "test" at the end)."""
        g = evaluation_generator(self.config.seed, split)
        return evaluate(self.learner, self.bench, num_tasks=num_tasks, steps=self.config.eval_steps, generator=g,
                        chunk=self.config.eval_chunk, split=split, device=self.device, dtype=self.dtype)

    # -- the loop --------------------------------------------------------------------------------
    def execute(self, *, progress: bool | None = None) -> dict[str, Any]:
        """Train, evaluate, save; returns the summary (also written to ``summary.json``)."""
        from tqdm.auto import tqdm

        out = self.prepare_output()
        self.build()
        cfg = self.config
        if out is not None:
            write_json_atomic(out / "config.json", self.resolved_config())
        metrics_fh = (out / "metrics.jsonl").open("a") if out is not None else None
        hook = self.manager.hook
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        status, done, loss_avg = "completed", 0, float("nan")
        stopped_by = "steps"
        old_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):  # noqa: ARG001
            raise _Terminated()

        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            old_term = None
        hook.on_run_start(run=self)
        t0 = time.perf_counter()
        train_time = 0.0
        sample_time = 0.0  # drawing the meta-batches, part of train_time: should be a small share
        bar = tqdm(total=cfg.steps, desc=f"{self.algo_spec.name} on {self.bench_spec.name}", disable=(False if progress else True) if progress is not None else None,
                   dynamic_ncols=True, leave=False)
        try:
            for step in range(1, cfg.steps + 1):
                ts = time.perf_counter()
                batch = self.bench.train_batch(gen).to(self.device, self.dtype)
                sample_time += time.perf_counter() - ts
                self.optimizer.zero_grad(set_to_none=True)
                m = self.learner.step(batch)
                if cfg.grad_clip > 0:
                    m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.learner.parameters(), cfg.grad_clip))
                self.optimizer.step()
                done = step  # parameters now reflect this many completed steps
                train_time += time.perf_counter() - ts
                loss = m.get("loss", float("nan"))
                loss_avg = loss if step == 1 else 0.95 * loss_avg + 0.05 * loss
                if step % cfg.log_every == 0 or step == cfg.steps:
                    bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
                    self._log(metrics_fh, {"step": step, "split": "train", **m, "loss_avg": loss_avg, "time_s": round(time.perf_counter() - t0, 3)})
                if cfg.time_budget_s and train_time >= cfg.time_budget_s and step != cfg.steps:
                    stopped_by = "time_budget"
                    hook.on_step_end(run=self, step=step, metrics=m)
                    bar.update(1)
                    break
                if cfg.val_every and step % cfg.val_every == 0 and step != cfg.steps:
                    val = self.evaluate(cfg.val_tasks, split="val")
                    m = {**m, **val}
                    self._log(metrics_fh, {"step": step, "split": "val", **val})
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and out is not None:
                    self.save_checkpoint(out / "checkpoint.pt", step)
                hook.on_step_end(run=self, step=step, metrics=m)
                bar.update(1)
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            bar.close()
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        summary: dict[str, Any] = {
            "algorithm": self.algo_spec.name,
            "benchmark": self.bench_spec.name,
            "kind": self.algo_spec.kind,
            "family": self.algo_spec.family,
            "metric": self.bench.info.metric,
            "status": status,
            "steps": done,
            "seed": cfg.seed,
            "device": str(self.device),
            "num_params": self.num_params,
            "train_time_s": round(train_time, 3),
            "steps_per_s": round(done / train_time, 2) if train_time > 0 else None,
            "sample_time_s": round(sample_time, 3),
            "sample_share": round(sample_time / train_time, 4) if train_time > 0 else None,
            "final_loss": loss_avg,
            "stopped_by": stopped_by if status == "completed" else status,
        }
        if hasattr(self.bench_config, "transductive"):
            summary["transductive"] = self.bench_config.transductive  # part of the protocol: say it
        if status == "completed":
            t_eval = time.perf_counter()
            summary.update(self.evaluate(cfg.eval_tasks))
            # adapting to a new task is what a user pays per task: all evaluated step counts included
            summary["adapt_time_per_task_ms"] = round(1000 * (time.perf_counter() - t_eval) / cfg.eval_tasks, 3)
            g = evaluation_generator(cfg.seed, "train_tasks")
            summary.update(evaluate_train_tasks(self.learner, self.bench, generator=g, device=self.device, dtype=self.dtype))
            summary["eval_time_s"] = round(time.perf_counter() - t_eval, 3)
        summary["peak_memory_mb"] = _peak_memory_mb(self.device)
        summary["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if out is not None:
            self.save_checkpoint(out / "checkpoint.pt", done)
            write_json_atomic(out / "summary.json", summary)
            summary_path = str(out)
            summary["out"] = summary_path
        if metrics_fh is not None:
            metrics_fh.close()
        self.summary = summary
        hook.on_run_end(run=self, summary=summary)
        return summary

    def _log(self, fh, record: dict[str, Any]) -> None:
        if fh is None:
            return
        fh.write(json.dumps(record, default=_json_default) + "\n")
        fh.flush()

    def save_checkpoint(self, path: Path, step: int) -> None:
        state = {
            "step": step,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.resolved_config(),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The outer optimizer.  The fused implementation (one kernel for every tensor) where torch
    has it for these tensors: meta-learners keep their parameters in one flat vector, so the
    per-step Python overhead of the optimizer is a visible share of a small model's step."""
    cls = torch.optim.Adam if name == "adam" else torch.optim.SGD
    try:
        return cls(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, foreach=True)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except Exception:  # noqa: BLE001
        return float("nan")



#: what `metareg eval` may change about a saved run without invalidating its checkpoint
EVAL_KEYS = ("eval_steps", "eval_tasks", "eval_chunk", "device")


def load_run(folder: str | Path, overrides: Mapping[str, Any] | None = None, *,
             manager: PluginManager | None = None) -> Run:
    """Rebuild a finished (or interrupted) run from its folder: the configuration in
    ``config.json``, the learner's state from ``checkpoint.pt``.  ``overrides`` may change only
    how it is evaluated (``run.eval_steps``, ``run.eval_tasks``, ``run.eval_chunk``,
    ``run.device``).  The returned run is built; ``run.checkpoint_step`` is the step it was saved at.
    """
    folder = Path(folder)
    cfg_path, ckpt = folder / "config.json", folder / "checkpoint.pt"
    if not folder.is_dir():
        raise OutputError(f"run folder {folder} does not exist.")
    for p in (cfg_path, ckpt):
        if not p.is_file():
            raise OutputError(f"{p} is missing: a run folder written by `metareg run` holds config.json and "
                              "checkpoint.pt (a run with --no-save writes none).")
    try:
        saved = json.loads(cfg_path.read_text())
        algorithm = saved.get("algorithm_ref", saved["algorithm"])
        benchmark = saved.get("benchmark_ref", saved["benchmark"])
        if not (isinstance(algorithm, str) and isinstance(benchmark, str)):
            raise TypeError("'algorithm' and 'benchmark' must be names")
        saved_layer = saved_overrides(saved)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputError(f"{cfg_path} is not a metareg run configuration ({type(e).__name__}: {e}).") from None
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        name = key.removeprefix("run.")
        if name not in EVAL_KEYS:
            raise ConfigError(f"'{key}' cannot change for a saved run; `metareg eval` sets only "
                              + ", ".join(EVAL_KEYS) + " (train a new run for anything else).")
        changes[f"run.{name}"] = value
    run = Run(algorithm, benchmark, Overrides(saved_layer, changes), manager=manager)
    run.build()
    try:
        # TorchVersion: checkpoints written before the config stored the version as a plain str
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            state = torch.load(ckpt, map_location=run.device, weights_only=True)
        run.learner.load_state_dict(state["learner"])
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: say which and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OutputError(f"cannot restore {ckpt}: {first}") from None
    run.checkpoint_step = int(state.get("step", 0))
    return run
