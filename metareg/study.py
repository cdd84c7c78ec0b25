"""The comparison protocol: plan, run (resumably, in parallel) and evaluate every (algorithm, seed).

Every algorithm is trained once per seed by the same runner under the same budget (steps, or
seconds of training on this machine), exactly as ``metareg run`` trains it.  Each trained model is
then evaluated at every shot count K asked for, without retraining: the benchmark is rebuilt with
``shots=K`` (nothing else that the evaluation reads changes) and the trained learner scores

* **new tasks**: the held-out tasks ``metareg run`` scores (the same generator), after each number
  of adaptation steps; at the training K these are the run's own numbers;
* **seen tasks**, where the benchmark has fixed training tasks: a multi-task learner with its
  trained heads (the run's ``train_tasks_<metric>``: it needs no support set, so it is the same at
  every K); a meta-learner by adapting to each training task from K fresh training examples of it
  (``train_batch`` of all M tasks, drawn from a generator of its own) and predicting the very
  query examples the heads are scored on (``train_tasks_batch``); a learner that can do neither is
  reported as not scorable there.

Runs are folders ``OUT/runs/ALGO-seedS-KEY`` where KEY hashes the resolved configuration and
metareg's version: a folder with a finished ``summary.json`` is reused, a partial one continues from
its last checkpoint (the runner's resume) or, without one, is redone; so an interrupted comparison
resumes where it stopped and adding an algorithm reruns nothing else.
Evaluations are files ``OUT/evals/ALGO-seedS-KEY/shots-K.json`` (adding a K reuses the training).
Each run is a separate process (``python -m metareg.study SPEC``) so its peak memory is its own,
``jobs`` of them at a time with ``cores // jobs`` threads each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import build_config
from .errors import ConfigError, MetaregError
from .overrides import Overrides, config_dict

__all__ = ["Budget", "parse_budget", "parse_ints", "PlannedRun", "plan_runs", "run_key", "eval_config",
           "evaluate_at_shots", "is_complete", "execute", "collect", "cpu_cores", "threads_per_job", "Outcome"]

#: the seen-task support sets of meta-learners come from this generator offset (evaluate.py's
#: EVAL_SEED_OFFSETS use 1-3), apart from every other draw of the run
SEEN_SUPPORT_OFFSET = 4
#: run options that do not change a run's numbers, left out of its key
VOLATILE_RUN_KEYS = ("log_every", "checkpoint_every", "track")
VOLATILE_KEYS = ("plugins", "torch_version")


# -- budget and lists -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    kind: str  # "steps" | "seconds"
    value: float

    def layer(self, user_sets_steps: bool) -> dict[str, Any]:
        if self.kind == "steps":
            return {"run.steps": int(self.value), "run.time_budget_s": 0.0}
        out: dict[str, Any] = {"run.time_budget_s": float(self.value)}
        if not user_sets_steps:
            out["run.steps"] = 1_000_000  # the time budget stops it; --set steps=N caps it
        return out

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


def parse_budget(text: str) -> Budget:
    kind, eq, value = text.partition("=")
    kind = kind.strip().lower()
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not eq or kind not in ("steps", "seconds") or not v > 0 or (kind == "steps" and v != int(v)):
        raise ConfigError(f"--budget takes steps=N (outer steps) or seconds=S (seconds of training on this machine), "
                          f"got {text!r}.")
    return Budget(kind, v)


def parse_ints(text: str, what: str, low: int = 0) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        vals = ()
    if not vals or any(v < low for v in vals):
        raise ConfigError(f"{what} takes comma-separated integers >= {low} (like 1,5,10), got {text!r}.")
    return tuple(sorted(set(vals)))


# -- planning -----------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def run_key(resolved: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of a run's resolved configuration (less what cannot change its
    numbers) and metareg's version."""
    cfg = {k: v for k, v in _plain(resolved).items() if k not in VOLATILE_KEYS}
    cfg["run_config"] = {k: v for k, v in cfg.get("run_config", {}).items() if k not in VOLATILE_RUN_KEYS}
    blob = json.dumps({"config": cfg, "metareg_version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass
class PlannedRun:
    algorithm: str
    seed: int
    layers: list[dict[str, Any]]
    key: str
    run: Any = dataclasses.field(repr=False, default=None)  # the resolved metareg.runner.Run (not built)

    @property
    def name(self) -> str:
        return f"{self.algorithm.replace(':', '_')}-seed{self.seed}-{self.key}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.name

    def eval_dir(self, out: Path) -> Path:
        return out / "evals" / self.name

    def label(self) -> str:
        return f"{self.algorithm} seed {self.seed}"


def plan_runs(algorithms: Sequence[str], benchmark: str, per_algorithm: Mapping[str, Overrides], seeds: Sequence[int],
              manager=None) -> list[PlannedRun]:
    """One resolved run per (algorithm, seed), every configuration checked before anything starts."""
    from .runner import Run

    out = []
    for a in algorithms:
        for s in seeds:
            layers = [*_plain(list(per_algorithm[a].layers)), {"run.seed": s}]
            run = Run(a, benchmark, Overrides(*layers), manager=manager)
            out.append(PlannedRun(a, s, layers, run_key(run.resolved_config()), run))
    return out


def eval_config(bench_spec, bench_config, shots: int):
    """The benchmark's config for evaluating at ``shots``: only what the evaluation cannot see
    changes.  A held-out query size that follows ``query`` is pinned; ``query`` (training only) is
    lowered where shots + query must fit the training instances; ``meta_batch`` becomes all M
    training tasks, whose support sets are drawn in one batch for the seen-task scores."""
    values = config_dict(bench_config)
    if "shots" not in values:
        raise ConfigError(f"benchmark {bench_spec.name} has no 'shots' setting, so it cannot be evaluated at other "
                          "shot counts; leave out --shots.")
    values["shots"] = shots
    if hasattr(bench_config, "eval_query_size") and "eval_query" in values:
        values["eval_query"] = bench_config.eval_query_size
    if "train_instances" in values and "query" in values and shots + values["query"] > values["train_instances"]:
        values["query"] = max(1, values["train_instances"] - shots)
    if "num_tasks" in values and "meta_batch" in values:
        values["meta_batch"] = values["num_tasks"]
    return build_config(bench_spec.config, values, where=f"benchmark {bench_spec.name} at {shots} shots")


# -- evaluation of a trained run at K shots ---------------------------------------------------------------
def _stepwise_final(scores: Mapping[str, Any], metric: str, steps: Sequence[int]) -> str | None:
    from .evaluate import metric_name

    for name in (metric_name(metric, max(steps)), metric):
        if isinstance(scores.get(name), (int, float)):
            return name
    return None


def benchmark_at_shots(run, shots: int):
    """The benchmark of a built ``run`` with ``shots`` support examples (see :func:`eval_config`)."""
    bench = run.bench_spec.factory(eval_config(run.bench_spec, run.bench_config, shots))
    if bench.info != run.bench.info:
        raise ConfigError(f"{run.bench_spec.name}'s task description changes with shots ({run.bench.info} -> "
                          f"{bench.info}); the trained learner cannot be evaluated at {shots} shots.")
    return bench


def evaluate_new_tasks_at_shots(run, shots: int, bench=None) -> dict[str, Any]:
    """Scores of a built, trained ``run`` on its held-out test tasks (the run's own evaluation
    tasks: same seed and generator) given ``shots`` support examples each."""
    from .evaluate import evaluate, evaluation_generator

    cfg = run.config
    return evaluate(run.learner, bench or benchmark_at_shots(run, shots), num_tasks=cfg.eval_tasks,
                    steps=cfg.eval_steps, generator=evaluation_generator(cfg.seed, "test"), chunk=cfg.eval_chunk,
                    split="test", device=run.device, dtype=run.dtype)


def evaluate_at_shots(run, summary: Mapping[str, Any], shots: int, *, new: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Scores of a built, trained ``run`` (a :class:`metareg.runner.Run`, e.g. from ``load_run``)
    at ``shots`` support examples: ``new`` (held-out tasks, every adaptation step count; pass
    ``new`` to reuse scores already known, e.g. the run's own at its training K), ``val`` (the
    same on ``val_tasks`` validation tasks, which choose the step count a report headlines; None
    for learners that adapt without steps) and ``seen`` (the training tasks, where the learner
    can be scored on them: ``seen_source`` says how, ``seen_note`` why not)."""
    import torch

    from .evaluate import evaluate, evaluate_tasks, evaluation_generator
    from .tasks.base import TaskBatch

    cfg = run.config
    metric = run.bench.info.metric
    t0 = time.perf_counter()
    bench = benchmark_at_shots(run, shots)
    if new is None:
        new = evaluate_new_tasks_at_shots(run, shots, bench)
    # how many adaptation steps to report is a hyperparameter: chosen on validation tasks (the
    # split and generator of the runner's periodic validation), never on the test tasks
    val = None
    if getattr(run.learner, "step_adaptation", True) and len(cfg.eval_steps) > 1:
        val = evaluate(run.learner, bench, num_tasks=cfg.val_tasks, steps=cfg.eval_steps,
                       generator=evaluation_generator(cfg.seed, "val"), chunk=cfg.eval_chunk, split="val",
                       device=run.device, dtype=run.dtype)
    out: dict[str, Any] = {"shots": shots, "train_shots": run.bench_config.shots, "new": dict(new), "val": val,
                           "seen": None, "seen_source": None, "seen_note": ""}
    train_key = f"train_tasks_{metric}"
    if isinstance(summary.get(train_key), (int, float)):
        out["seen"] = {metric: summary[train_key], metric + "_ci95": summary.get(train_key + "_ci95"),
                       metric + "_per_task": summary.get(train_key + "_per_task")}
        out["seen_source"] = "heads"
    elif not hasattr(run.bench, "train_tasks_batch"):
        out["seen_note"] = f"{run.bench_spec.name} has no fixed training tasks"
    else:
        query = run.bench.train_tasks_batch(evaluation_generator(cfg.seed, "train_tasks"))
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + SEEN_SUPPORT_OFFSET)
        support = bench.train_batch(g)
        if support.task_ids is None or query.task_ids is None or not torch.equal(support.task_ids, query.task_ids):
            out["seen_note"] = "the benchmark does not draw support sets of all its training tasks in one batch"
        else:
            batch = TaskBatch(support.support_x, support.support_y, query.query_x, query.query_y, query.task_ids)
            out["seen"] = evaluate_tasks(run.learner, batch, run.bench.info, steps=cfg.eval_steps,
                                         chunk=cfg.eval_chunk, device=run.device, dtype=run.dtype)
            out["seen_source"] = "adapted"
    out["eval_time_s"] = round(time.perf_counter() - t0, 3)
    return out


def summary_scores(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A run summary's new-task scores (each with its CI) and ``eval_tasks``."""
    from .evaluate import is_metric_key

    metric = summary.get("metric")
    keep = {n: v for n, v in summary.items() if not n.startswith("train_tasks_")
            and (is_metric_key(n, metric) or (n.endswith("_ci95") and is_metric_key(n[:-5], metric)))}
    keep["eval_tasks"] = summary.get("eval_tasks")
    return keep


# -- one run, in whatever process ----------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


#: a run that ended in one of these is not run again (a diverged run would diverge again)
FINAL_STATUSES = ("completed", "diverged")


def training_done(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The summary of a finished run (completed, or diverged) with this key in ``run_dir``, else None."""
    summary = _read_json(run_dir / "summary.json")
    saved = _read_json(run_dir / "config.json")
    if not summary or not saved or summary.get("status") not in FINAL_STATUSES:
        return None
    if summary["status"] == "completed" and not (run_dir / "checkpoint.pt").is_file():
        return None
    return summary if run_key(saved) == key else None


def _eval_path(eval_dir: Path, shots: int) -> Path:
    return eval_dir / f"shots-{shots}.json"


def _eval_done(path: Path, key: str) -> dict[str, Any] | None:
    """An evaluation file of this run in the current format (with ``val``), else None."""
    ev = _read_json(path)
    return ev if ev and ev.get("key") == key and ("val" in ev or "error" in ev) else None


def is_complete(p: PlannedRun, out: Path, shots: Sequence[int]) -> bool:
    summary = training_done(p.run_dir(out), p.key)
    if summary is None:
        return False
    return summary["status"] != "completed" or all(_eval_done(_eval_path(p.eval_dir(out), k), p.key) for k in shots)


def run_one(spec: Mapping[str, Any], manager=None) -> dict[str, Any]:
    """Train (unless done) and evaluate one planned run; the body of the worker process."""
    from .io import write_json
    from .runner import Run, load_run

    run_dir, eval_dir, key = Path(spec["run_dir"]), Path(spec["eval_dir"]), spec["key"]
    run = Run(spec["algorithm"], spec["benchmark"], Overrides(*spec["layers"]), out=run_dir, manager=manager)
    if run_key(run.resolved_config()) != key:
        raise MetaregError(f"{spec['algorithm']} seed {spec['layers'][-1]}: the configuration resolves differently "
                           "in the worker than in the comparison (a plugin changed while it ran?); run it again.")
    summary = training_done(run_dir, key)
    if summary is not None and summary["status"] != "completed":
        return {"status": summary["status"], "trained": False}
    trained = summary is None
    if trained:
        saved = _read_json(run_dir / "config.json")
        resume = (_runner_resumes() and saved is not None and run_key(saved) == key
                  and (run_dir / "checkpoint.pt").is_file())
        if not resume and run_dir.exists():  # a partial run without a checkpoint to continue from: redone
            shutil.rmtree(run_dir)
        # a killed or interrupted run continues from its last checkpoint (the runner checks it agrees)
        summary = run.execute(progress=False, resume=True) if resume else run.execute(progress=False)
        if summary.get("status") != "completed":
            return {"status": summary.get("status", "failed"), "trained": True}
    base = run if trained else load_run(run_dir, manager=manager)
    eval_dir.mkdir(parents=True, exist_ok=True)
    for k in spec["shots"]:
        path = _eval_path(eval_dir, k)
        if _eval_done(path, key):
            continue
        older = _read_json(path) or {}  # an evaluation from before validation-chosen steps: its test scores stand
        try:  # at the training K the new-task scores are the run's own summary
            own = summary_scores(summary) if k == base.bench_config.shots else None
            if own is None and older.get("key") == key and older.get("new"):
                own = older["new"]
            res = evaluate_at_shots(base, summary, k, new=own)
        except MetaregError as e:
            res = {"shots": k, "error": str(e)}
        write_json(path, {"key": key, **res})
    return {"status": "completed", "trained": trained}


def _runner_resumes() -> bool:
    import inspect

    from .runner import Run

    return "resume" in inspect.signature(Run.execute).parameters


# -- running the plan -----------------------------------------------------------------------------------------
def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Threads of each run so that jobs x threads does not exceed the cores (nor an
    ``OMP_NUM_THREADS`` the user set, taken as a cap per run)."""
    n = max(1, cpu_cores() // max(1, jobs))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(n, int(cap))) if cap.isdigit() and int(cap) > 0 else n


@dataclasses.dataclass
class Outcome:
    run: PlannedRun
    status: str  # "reused" | "completed" | "failed" | "interrupted"
    seconds: float = 0.0
    message: str = ""


def _spec(p: PlannedRun, out: Path, benchmark: str, shots: Sequence[int], threads: int) -> dict[str, Any]:
    return {"algorithm": p.algorithm, "benchmark": benchmark, "layers": p.layers, "key": p.key,
            "run_dir": str(p.run_dir(out)), "eval_dir": str(p.eval_dir(out)), "shots": list(shots), "threads": threads}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the child outlives a killed parent
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in text if ln.startswith(("Error", "metareg.errors", "Traceback")) or "Error:" in ln]
    return " | ".join((errs[-1:] if errs else []) + text[-lines:])[-600:]


def execute(planned: Sequence[PlannedRun], out: Path, benchmark: str, shots: Sequence[int], *, jobs: int = 1,
            on_event=None, manager=None, poll_s: float = 0.2) -> list[Outcome]:
    """Run what is not complete yet: ``jobs`` worker processes at a time (``jobs=0``: one after
    another in this process, with no per-run memory figure).  ``on_event(kind, outcome_or_run,
    state)`` is told of every start ("start") and end ("end"), and ticks ("tick") while runs go,
    for a progress display.  Ctrl-C / SIGTERM stop the workers (each saves its run as interrupted)
    and raise KeyboardInterrupt after they have exited."""
    out = Path(out)
    outcomes: list[Outcome] = []
    todo = []
    for p in planned:
        if is_complete(p, out, shots):
            outcomes.append(Outcome(p, "reused"))
        else:
            todo.append(p)
    emit = on_event or (lambda *a: None)
    state = {"total": len(planned), "done": len(outcomes), "running": {}, "durations": [], "jobs": max(1, jobs)}
    for o in outcomes:
        emit("end", o, state)
    if jobs == 0:
        for p in todo:
            state["running"][p.label()] = time.time()
            emit("start", p, state)
            t0 = time.time()
            try:
                res = run_one(_spec(p, out, benchmark, shots, 0), manager=manager)
                o = Outcome(p, "completed" if res["status"] == "completed" else res["status"], time.time() - t0)
            except MetaregError as e:
                o = Outcome(p, "failed", time.time() - t0, str(e))
            state["running"].pop(p.label(), None)
            state["done"] += 1
            state["durations"].append(o.seconds)
            outcomes.append(o)
            emit("end", o, state)
            if o.status == "interrupted":
                raise KeyboardInterrupt
        return outcomes
    threads = threads_per_job(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    procs: dict[int, tuple[subprocess.Popen, PlannedRun, float, Path]] = {}
    pending = list(todo)
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old_term = None
    try:
        while pending or procs:
            while pending and len(procs) < jobs:
                p = pending.pop(0)
                log_path = out / "logs" / f"{p.name}.log"
                with log_path.open("a") as fh:
                    fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {p.label()}, {threads} thread(s)\n")
                    fh.flush()
                    proc = subprocess.Popen([sys.executable, "-m", "metareg.study",
                                             json.dumps(_spec(p, out, benchmark, shots, threads))],
                                            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
                procs[proc.pid] = (proc, p, time.time(), log_path)
                state["running"][p.label()] = time.time()
                emit("start", p, state)
            time.sleep(poll_s)
            for pid, (proc, p, t0, log_path) in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del procs[pid]
                state["running"].pop(p.label(), None)
                dt = time.time() - t0
                if is_complete(p, out, shots):  # completed (or diverged: final too, and said)
                    o = Outcome(p, (training_done(p.run_dir(out), p.key) or {}).get("status", "completed"), dt)
                    state["durations"].append(dt)
                else:
                    o = Outcome(p, "failed", dt, f"exit status {rc}; {_tail(log_path)} (log: {log_path})")
                state["done"] += 1
                outcomes.append(o)
                emit("end", o, state)
            emit("tick", None, state)
    except KeyboardInterrupt:
        for proc, *_ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # each run saves its checkpoint and an interrupted summary
        deadline = time.time() + 30
        for proc, *_ in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return outcomes


def collect(planned: Sequence[PlannedRun], out: Path, shots: Sequence[int]) -> list[dict[str, Any]]:
    """Per planned run: its summary and its evaluation at each K (None where missing)."""
    rows = []
    for p in planned:
        summary = _read_json(p.run_dir(out) / "summary.json")
        evals = {k: _read_json(_eval_path(p.eval_dir(out), k)) for k in shots}
        rows.append({"algorithm": p.algorithm, "seed": p.seed, "key": p.key, "folder": str(p.run_dir(out)),
                     "summary": summary, "evals": evals})
    return rows


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    try:
        res = run_one(spec)
    except MetaregError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(res))
    return 0 if res["status"] == "completed" else 3


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
