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
import math
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
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import capture_rng, check_compatible, load_checkpoint, restore_rng
from .evaluate import evaluate, evaluate_train_tasks, evaluation_generator
from .distributed import from_env
from .machine import check_fits, choose_threads, peak_memory_mb
from .io import AppendLog, FolderLock, describe_os_error, save_torch, write_json
from .learners.base import LearnerContext
from .plugins import PluginManager, get_manager

__all__ = ["RunConfig", "Run", "load_run", "make_optimizer"]

log = logging.getLogger(__name__)


#: the largest seed whose evaluation generators (seed * 1_000_003 + 3) stay inside torch's 64-bit range
SEED_MAX = (2**64 - 1 - 3) // 1_000_003


@config
class RunConfig:
    steps: int = param(3000, "outer (meta-)training steps (the most, when time_budget_s stops it first)", ge=1,
                       le=10**9)
    time_budget_s: float = param(0.0, "stop training after this many seconds of training steps (0: no time limit); "
                                      "the summary says how many steps were reached", ge=0)
    optimizer: Literal["adam", "sgd"] = param("adam", "outer optimizer (the runner owns it)")
    lr: float = param(1e-3, "outer learning rate", gt=0)
    grad_clip: float = param(0.0, "clip the outer gradient norm at this value (0: off)", ge=0)
    seed: int = param(0, "seed of initialisation, task sampling and evaluation tasks", ge=0, le=SEED_MAX)
    device: str = param("cpu", "torch device: cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "float64"] = param("float32", "floating-point precision")
    eval_steps: tuple[int, ...] = param((0, 1, 10), "adaptation steps after which held-out tasks are scored")
    eval_tasks: int = param(600, "held-out tasks in the final evaluation", ge=1, le=10**7)
    val_every: int = param(500, "evaluate on validation tasks every N steps (0: only at the end)", ge=0)
    val_tasks: int = param(100, "held-out tasks of each periodic evaluation", ge=1)
    eval_chunk: int = param(100, "tasks adapted at once during evaluation (memory bound)", ge=1)
    log_every: int = param(10, "write the training loss to metrics.jsonl every N steps", ge=1)
    checkpoint_every: int = param(500, "checkpoint every N steps (0: not by steps); `metareg run --resume DIR` continues "
                                       "from the last one", ge=0)
    checkpoint_every_s: float = param(60.0, "also checkpoint when this many seconds passed since the last one (0: not by time)",
                                      ge=0)
    track: str = param("", "experiment trackers fed by the run-observer hooks, comma-separated: tensorboard, csv "
                           "(plugins may add more; empty: none, or $METAREG_TRACK)")
    threads: int = param(0, "intra-op CPU threads (0: chosen per workload: one for small per-op work, every core for "
                            "large convolutions; OMP_NUM_THREADS, if set, is respected)", ge=0, le=1024)
    on_nonfinite: Literal["stop", "skip"] = param(
        "stop", "a NaN or Inf in the loss or gradients: 'stop' the run (status 'diverged', the last good checkpoint "
        "kept) or 'skip' that step (counted in nonfinite_skipped_steps); non-finite parameters always stop it")

    def __post_init__(self) -> None:
        if any(k < 0 for k in self.eval_steps) or not self.eval_steps:
            raise ConfigError(f"eval_steps must be non-negative step counts like [0, 1, 10], got {list(self.eval_steps)}.")
        if self.device != "cpu" and not self.device.startswith(("cuda", "mps", "xpu")):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OutputError(f"{path} cannot be read ({type(e).__name__}: {e}).") from None
    if not isinstance(data, dict):
        raise OutputError(f"{path} is not a JSON object.")
    return data


class _Interrupted(Exception):
    """A signal arrived and the run stopped at a step boundary after checkpointing."""


class _Diverged(Exception):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} at step {step}")
        self.step, self.what = step, what


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

    @classmethod
    def from_folder(cls, folder: str | Path, changes: Mapping[str, Any] | None = None, *,
                    manager: PluginManager | None = None, out: bool = True) -> "Run":
        """The run saved in ``folder``, from its ``config.json`` (``changes``: run.* keys on top);
        ``out=True`` writes into that folder again (resume)."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not folder.is_dir():
            raise OutputError(f"run folder {folder} does not exist.")
        if not cfg_path.is_file():
            raise OutputError(f"{cfg_path} is missing: a run folder written by `metareg run` holds config.json and "
                              "checkpoint.pt (a run with --no-save writes none).")
        saved = _read_json(cfg_path)
        try:
            algorithm = saved.get("algorithm_ref", saved["algorithm"])
            benchmark = saved.get("benchmark_ref", saved["benchmark"])
            if not (isinstance(algorithm, str) and isinstance(benchmark, str)):
                raise TypeError("'algorithm' and 'benchmark' must be names")
            layer = saved_overrides(saved)
        except KeyError as e:
            raise OutputError(f"{cfg_path} is not a metareg run configuration (no {e} entry).") from None
        except (TypeError, ConfigError) as e:
            raise OutputError(f"{cfg_path} is not a metareg run configuration ({e}).") from None
        try:
            return cls(algorithm, benchmark, Overrides(layer, dict(changes or {})), out=folder if out else None,
                       manager=manager)
        except ConfigError as e:
            raise OutputError(f"{cfg_path} holds settings this metareg refuses: {e}") from None

    def _check_device(self) -> None:
        dev = self.config.device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu.")

    # -- output folder -----------------------------------------------------------------------
    def prepare_output(self, *, resume: bool = False) -> Path | None:
        """Create (or, resuming, check) the run folder; nothing is written into it yet."""
        if self.out is None:
            if resume:
                raise ConfigError("resuming needs the run folder (--resume DIR).")
            return None
        out = self.out
        if str(out).strip() == "":
            raise OutputError("the output folder name is empty; pass a folder.")
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory; choose another path.")
        if resume:
            for name in ("config.json", "checkpoint.pt"):
                if not (out / name).is_file():
                    raise OutputError(f"cannot resume {out}: it has no {name} (a run saves its first checkpoint after "
                                      f"checkpoint_every steps or checkpoint_every_s seconds).")
            return out
        if out.is_dir() and any(out.iterdir()):
            raise OutputError(f"--out {out} already contains files; choose an empty or new folder so no run is "
                              f"overwritten (or continue it with `metareg run --resume {out}`).")
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out, prefix=".probe"):
                pass
        except OSError as e:
            raise OutputError(f"--out {out} is not writable ({describe_os_error(e)}); choose a folder you can write to.") from None
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
        self.dist = from_env(self.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.bench = self.bench_spec.factory(self.bench_config)
        check_fits(self.bench, self.bench_spec.name)
        self.threads, self.threads_reason = choose_threads(cfg.threads, self.bench, self.device,
                                                            self.dist.world if self.dist is not None else 1)
        torch.set_num_threads(self.threads)
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

        ctx = LearnerContext(task=info, make_backbone=make_backbone, distributed=self.dist,
                             generator=torch.Generator().manual_seed(cfg.seed), device=self.device,
                             dtype=self.dtype, make_combiner=make_combiner)
        self.learner = self.algo_spec.factory(self.algo_config, ctx).to(self.device, self.dtype)
        if self.dist is not None:
            self.dist.broadcast_params(self.learner)  # equal by the seed already; made certain
        params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg.optimizer, params, cfg.lr)
        self.num_params = sum(p.numel() for p in params)
        self._checked = [p.detach() for p in self.learner.parameters()]

    def evaluate(self, num_tasks: int, split: str = "test") -> dict[str, float]:
        """Few-shot evaluation on ``split`` tasks ("val" during training, "test" at the end)."""
        g = evaluation_generator(self.config.seed, split)
        return evaluate(self.learner, self.bench, num_tasks=num_tasks, steps=self.config.eval_steps, generator=g,
                        chunk=self.config.eval_chunk, split=split, device=self.device, dtype=self.dtype)

    # -- the loop --------------------------------------------------------------------------------
    def execute(self, *, progress: bool | None = None, resume: bool = False) -> dict[str, Any]:
        """Train, evaluate, save; returns the summary (also written to ``summary.json``).

        ``resume=True`` continues the run saved in ``out`` from its last checkpoint (the same
        configuration: ``config.json`` and the checkpoint must agree).  Ctrl-C or SIGTERM saves a
        checkpoint at the next step boundary (or abandons the final evaluation, whose checkpoint
        exists) and returns a summary whose ``status`` is ``interrupted``; a NaN or Inf stops the
        run with status ``diverged`` (or skips the step: ``on_nonfinite='skip'``).
        """
        threads_before = torch.get_num_threads()
        self.build()  # every check that building makes (backbone, dataset, sizes) before a folder exists
        writes = self.dist is None or self.dist.is_main  # only rank 0 writes files
        out = self.prepare_output(resume=resume) if writes else None
        lock = FolderLock(out) if out is not None else None
        finished = False
        try:
            prev = self.out / "summary.json" if self.out is not None else None
            if resume and prev.is_file() and not prev.is_symlink():
                try:
                    done = _read_json(prev)
                except OutputError:  # a torn or foreign summary: the checkpoint decides
                    done = {}
                if done.get("status") == "completed":
                    log.info("%s is complete; nothing to resume", self.out)
                    return {**done, "out": str(self.out), "resumed": "already complete"}
            summary = self._execute(out, progress, resume)
            finished = True
            return summary
        finally:
            if lock is not None:
                lock.release()
            if self.dist is not None:
                self.dist.close(finished=finished)
            torch.set_num_threads(threads_before)  # the caller's process keeps its own setting

    def _execute(self, out: Path | None, progress: bool | None, resume: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.config
        dist = self.dist
        ckpt_path = out / "checkpoint.pt" if out is not None else None
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        generators = {"sampler": gen, "learner": self.learner.context.generator}
        loop = {"step": 0, "train_time": 0.0, "sample_time": 0.0, "loss_avg": float("nan"), "skipped": 0,
                "stopped_by": "steps", "trained": False}
        metrics_bytes = None
        if resume:
            source = self.out / "checkpoint.pt"  # every rank reads it (a folder all ranks can see)
            state = load_checkpoint(source, self.device)
            check_compatible(state, self.resolved_config(), source, __version__)
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
            ranks = state.get("rng_ranks")
            restore_rng(ranks[dist.rank] if ranks and dist is not None and dist.rank < len(ranks) else state["rng"],
                        generators)
            loop.update(state["loop"])
            metrics_bytes = int(state["metrics_bytes"])
            log.info("resuming %s from step %d", self.out, loop["step"])
        elif out is not None:
            write_json(out / "config.json", self.resolved_config(), what="the run configuration")
        self.last_checkpoint = (self.out / "checkpoint.pt", loop["step"]) if resume else None
        metrics = AppendLog(out / "metrics.jsonl", truncate_to=metrics_bytes) if out is not None else None
        hook = self.manager.hook
        status = "completed"
        self._signal: str | None = None
        self._phase = "train"
        restore = self._install_signal_handlers()
        hook.on_run_start(run=self)
        t0 = time.perf_counter()
        last_save = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=loop["step"], desc=f"{self.algo_spec.name} on {self.bench_spec.name}",
                   disable=(False if progress else True) if progress is not None else None, dynamic_ncols=True, leave=False)
        try:
            for step in range(loop["step"] + 1, cfg.steps + 1):
                if loop["trained"]:
                    break
                ts = time.perf_counter()
                batch = self.bench.train_batch(gen).to(self.device, self.dtype)
                if dist is not None:  # every rank drew the same global batch: keep this rank's part
                    batch = dist.shard(batch, self.learner.kind)
                loop["sample_time"] += time.perf_counter() - ts
                self.optimizer.zero_grad(set_to_none=True)
                m = self.learner.step(batch)
                if dist is not None:
                    dist.mean_grads([p for p in self.learner.parameters() if p.requires_grad])
                    m = dist.mean_metrics(m)
                if cfg.grad_clip > 0:
                    m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.learner.parameters(), cfg.grad_clip))
                # 'skip' must see bad gradients before they reach the parameters; 'stop' checks only the
                # parameters after the step (a NaN or Inf gradient makes them non-finite too) and names
                # the cause then, so a healthy step pays for one check, not two
                bad = self._nonfinite(m) if cfg.on_nonfinite == "skip" else self._nonfinite_loss(m)
                if bad is None:
                    self.optimizer.step()
                    broken = self._nonfinite_params()
                    if broken is not None:  # the state is not checkpointed: the last good checkpoint stays
                        raise _Diverged(step, self._nonfinite(m) or broken)
                if bad is not None:
                    if cfg.on_nonfinite == "stop":
                        raise _Diverged(step, bad)
                    loop["skipped"] += 1  # the batch is consumed, the parameters stay as they were
                    self.optimizer.zero_grad(set_to_none=True)
                loop["step"] = step  # parameters now reflect this many completed steps
                loop["train_time"] += time.perf_counter() - ts
                loss = m.get("loss", float("nan"))
                if bad is None:
                    loop["loss_avg"] = loss if step == 1 or math.isnan(loop["loss_avg"]) else 0.95 * loop["loss_avg"] + 0.05 * loss
                if step % cfg.log_every == 0 or step == cfg.steps:
                    bar.set_postfix(loss=f"{loop['loss_avg']:.4f}", refresh=False)
                    self._log(metrics, {"step": step, "split": "train", **m, "loss_avg": loop["loss_avg"],
                                        "time_s": round(time.perf_counter() - t0, 3)})
                budget_hit = bool(cfg.time_budget_s) and loop["train_time"] >= cfg.time_budget_s and step != cfg.steps
                if dist is not None and cfg.time_budget_s:
                    (budget_hit,) = dist.any(budget_hit)  # rank 0's clock would otherwise stop it alone
                if (cfg.val_every and step % cfg.val_every == 0 and step != cfg.steps and not budget_hit
                        and (dist is None or dist.is_main)):
                    val = self.evaluate(cfg.val_tasks, split="val")
                    m = {**m, **val}
                    self._log(metrics, {"step": step, "split": "val", **val})
                hook.on_step_end(run=self, step=step, metrics=m)
                bar.update(1)
                if budget_hit:
                    loop["stopped_by"] = "time_budget"
                    break
                by_time = bool(cfg.checkpoint_every_s) and time.monotonic() - last_save >= cfg.checkpoint_every_s
                stop = self._signal is not None
                if dist is not None:  # the ranks decide together: a checkpoint gathers all of them
                    by_time, stop = dist.any(by_time, stop)
                due = bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or by_time
                if (due or stop) and self.out is not None and step != cfg.steps:
                    self._checkpoint(ckpt_path, loop, metrics, generators)
                    last_save = time.monotonic()
                if stop:
                    self._signal = self._signal or "SIGTERM"  # another rank's signal
                    raise _Interrupted()
            loop["trained"] = True
            if self.out is not None:  # training is over: this is the state the evaluation (and a resume) starts from
                self._checkpoint(ckpt_path, loop, metrics, generators)
            self._phase = "evaluate"
            if self._signal:
                raise _Interrupted()
            if dist is not None and not dist.is_main:  # rank 0 evaluates and writes; the others are done
                summary = self._summary(loop, "completed")
                summary["rank"] = dist.rank
                self.summary = summary
                return summary
            summary = self._summary(loop, "completed")
            t_eval = time.perf_counter()
            summary.update(self.evaluate(cfg.eval_tasks))
            # adapting to a new task is what a user pays per task: all evaluated step counts included
            summary["adapt_time_per_task_ms"] = round(1000 * (time.perf_counter() - t_eval) / cfg.eval_tasks, 3)
            summary.update(evaluate_train_tasks(self.learner, self.bench, generator=evaluation_generator(cfg.seed, "train_tasks"),
                                                device=self.device, dtype=self.dtype))
            summary["eval_time_s"] = round(time.perf_counter() - t_eval, 3)
        except (KeyboardInterrupt, _Interrupted) as e:
            status = "interrupted"
            self._signal = self._signal or ("SIGTERM" if isinstance(e, _Terminated) else "SIGINT")
            if not loop["trained"] and out is not None and self._phase == "train" and not isinstance(e, _Interrupted):
                # an interrupt that did not wait for the step boundary (a second Ctrl-C): the
                # parameters may be mid-update, so keep the last checkpoint rather than write a torn state
                log.warning("interrupted inside a step: the last checkpoint stays the one to resume from")
            summary = self._summary(loop, status)
        except _Diverged as e:
            status = "diverged"
            where = (f"the last good checkpoint is {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})"
                     if self.last_checkpoint else "no checkpoint was written before it")
            self.diverged = f"{e.what} at step {e.step}; {where}."
            summary = self._summary(loop, status)
            summary["diverged"] = self.diverged
        except OutputError as e:
            where = (f" The last good checkpoint is {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})."
                     if self.last_checkpoint else "")
            raise OutputError(f"{e}{where}") from None
        finally:
            bar.close()
            restore()
        if status == "interrupted":
            summary["interrupted_by"] = self._signal
        summary["peak_memory_mb"] = peak_memory_mb(self.device)
        summary["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if out is not None:
            if metrics is not None:
                metrics.sync()
            write_json(out / "summary.json", summary, what="the summary")
            summary["out"] = str(out)
        if metrics is not None:
            metrics.close()
        self.summary = summary
        hook.on_run_end(run=self, summary=summary)
        return summary

    def _summary(self, loop: dict[str, Any], status: str) -> dict[str, Any]:
        cfg, train_time, done = self.config, loop["train_time"], loop["step"]
        s: dict[str, Any] = {
            "algorithm": self.algo_spec.name,
            "benchmark": self.bench_spec.name,
            "kind": self.algo_spec.kind,
            "family": self.algo_spec.family,
            "metric": self.bench.info.metric,
            "status": status,
            "steps": done,
            "seed": cfg.seed,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "threads_reason": getattr(self, "threads_reason", ""),
            # workers of a step that ran its chunks of tasks on their own threads (task_parallel)
            "step_workers": getattr(getattr(self, "learner", None), "step_workers", 1),
            "num_params": self.num_params,
            "train_time_s": round(train_time, 3),
            "steps_per_s": round(done / train_time, 2) if train_time > 0 else None,
            "sample_time_s": round(loop["sample_time"], 3),
            "sample_share": round(loop["sample_time"] / train_time, 4) if train_time > 0 else None,
            "final_loss": loop["loss_avg"],
            "stopped_by": loop["stopped_by"] if status == "completed" else status,
            "nonfinite_skipped_steps": loop["skipped"],
        }
        if hasattr(self.bench_config, "transductive"):
            s["transductive"] = self.bench_config.transductive  # part of the protocol: say it
        if self.dist is not None and done:
            s["world_size"] = self.dist.world
            s["allreduce_bytes_per_step"] = round(self.dist.bytes_reduced / done)
            s["allreduce_ms_per_step"] = round(1000 * self.dist.comm_time / done, 3)
        return s

    @staticmethod
    def _nonfinite_loss(m: Mapping[str, Any]) -> str | None:
        loss = m.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            return f"the training loss is {loss}"
        return None

    def _nonfinite(self, m: Mapping[str, Any]) -> str | None:
        bad = self._nonfinite_loss(m)
        if bad is not None:
            return bad
        grads = [p.grad for p in self.learner.parameters() if p.grad is not None]
        if grads and not _all_finite(grads):
            names = [n for n, p in self.learner.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            return f"the gradient of {', '.join(names)} holds NaN or Inf"
        return None

    def _nonfinite_params(self) -> str | None:
        params = self._checked  # detached views of every parameter, made once in build()
        if params and not _all_finite(params):
            names = [n for n, p in self.learner.named_parameters() if not torch.isfinite(p).all()]
            return f"the parameters {', '.join(names)} hold NaN or Inf after the optimizer step"
        return None

    def _install_signal_handlers(self):
        """Ctrl-C and SIGTERM stop the run at the next step boundary (so the checkpoint is a whole
        state); during the final evaluation, or on a second signal, at once."""
        def handler(signum, frame):  # noqa: ARG001
            name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
            if self._signal is not None or self._phase == "evaluate":
                self._signal = self._signal or name
                raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
            self._signal = name

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: Python's defaults stay
                pass

        def restore() -> None:
            for sig, h in old.items():
                signal.signal(sig, h)

        return restore

    def _log(self, metrics: AppendLog | None, record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(record)

    def _checkpoint(self, path: Path | None, loop: dict[str, Any], metrics: AppendLog | None,
                    generators: Mapping[str, torch.Generator]) -> None:
        """Rank 0 saves; in a multi-process run every rank takes part (its RNG state is gathered)."""
        rng = capture_rng(generators)
        ranks = self.dist.gather(rng) if getattr(self, "dist", None) is not None else None
        if path is None:
            return
        if metrics is not None:
            metrics.sync()  # the lines the checkpoint counts are on disk before it is
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": loop["step"],
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            **({"rng_ranks": ranks} if ranks is not None else {}),
            "loop": dict(loop),
            "metrics_bytes": metrics.size if metrics is not None else 0,
            "config": self.resolved_config(),
        }
        save_torch(path, state, what=f"the checkpoint of step {loop['step']}")
        self.last_checkpoint = (path, loop["step"])

    def save_checkpoint(self, path: Path, step: int) -> None:
        """A checkpoint of the current parameters (for tools and tests; runs save their own)."""
        loop = {"step": step, "train_time": 0.0, "sample_time": 0.0, "loss_avg": float("nan"), "skipped": 0,
                "stopped_by": "steps", "trained": True}
        self._checkpoint(Path(path), loop, None, {"learner": self.learner.context.generator})


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    # per-tensor isfinite (a norm would overflow on large but finite values); one sync
    if len(tensors) == 1:  # meta-learners keep one flat parameter vector
        return bool(tensors[0].isfinite().all())
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The outer optimizer.  The fused implementation (one kernel for every tensor) where torch
    has it for these tensors: meta-learners keep their parameters in one flat vector, so the
    per-step Python overhead of the optimizer is a visible share of a small model's step."""
    cls = torch.optim.Adam if name == "adam" else torch.optim.SGD
    try:
        return cls(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, foreach=True)


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
    for key in overrides or {}:
        if key.removeprefix("run.") not in EVAL_KEYS:
            raise ConfigError(f"'{key}' cannot change for a saved run; `metareg eval` sets only "
                              + ", ".join(EVAL_KEYS) + " (train a new run for anything else).")
    ckpt = folder / "checkpoint.pt"
    if folder.is_dir() and not ckpt.is_file():
        raise OutputError(f"{ckpt} is missing: a run folder written by `metareg run` holds config.json and "
                          "checkpoint.pt (a run with --no-save writes none).")
    run = Run.from_folder(folder, {f"run.{k.removeprefix('run.')}": v for k, v in (overrides or {}).items()},
                          manager=manager, out=False)
    run.build()
    state = load_checkpoint(ckpt, run.device)
    try:
        run.learner.load_state_dict(state["learner"])
    except Exception as e:  # noqa: BLE001 - a foreign or crafted file: say which and the whole mismatch
        raise OutputError(f"cannot restore {ckpt}: {' '.join(str(e).split())}") from None
    run.checkpoint_step = state["step"]
    return run
