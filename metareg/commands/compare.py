"""``metareg compare``: algorithms (or a named suite) on one benchmark, several seeds, several shot
counts, one budget; resumable, parallel, one report."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from ..compare import aggregate, check_names, csv_rows, lower_is_better, paradigm_check, render, split_overrides, write_report
from ..errors import ConfigError
from ..overrides import Overrides, collect_overrides
from ..plugins import get_manager

__all__ = ["compare"]

#: what a comparison changes about `metareg run`'s defaults (a --set wins): the issue's 0, 1, 5
#: adaptation steps, and no periodic validation (it costs wall time and no comparison reads it)
COMPARE_DEFAULTS = {"run.eval_steps": [0, 1, 5], "run.val_every": 0}


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class _Progress:
    """Which runs are going, how many are done, the time left (stderr; a bar on a terminal)."""

    def __init__(self, total: int, jobs: int, per_run_guess: float | None, quiet: bool) -> None:
        from tqdm.auto import tqdm

        self.quiet = quiet
        self.jobs = max(1, jobs)
        self.guess = per_run_guess
        self.bar = tqdm(total=total, unit="run", desc="compare", dynamic_ncols=True, disable=quiet or None,
                        bar_format="{desc}: {n_fmt}/{total_fmt} runs done |{bar}| {elapsed} {postfix}")

    def left(self, state) -> str:
        durations = state["durations"]
        per = sum(durations) / len(durations) if durations else self.guess
        if per is None:
            return "time left: after the first run"
        now = time.time()
        running = sum(max(0.0, per - (now - t0)) for t0 in state["running"].values())
        waiting = state["total"] - state["done"] - len(state["running"])
        return f"time left ~{_fmt_s((running + waiting * per) / self.jobs)}"

    def __call__(self, kind, obj, state) -> None:
        if kind == "end":
            self.bar.update(1)
            if obj.status != "reused" and not self.quiet:
                msg = f"[{state['done']}/{state['total']}] {obj.status}: {obj.run.label()} ({_fmt_s(obj.seconds)})"
                if obj.message:
                    msg += f": {obj.message}"
                elif state["done"] < state["total"]:
                    msg += f"; {self.left(state)}"
                self.bar.write(msg, file=sys.stderr)
        now = time.time()
        going = ", ".join(f"{name} {_fmt_s(now - t0)}" for name, t0 in state["running"].items())
        self.bar.set_postfix_str((f"running: {going}; " if going else "") + self.left(state), refresh=True)

    def close(self) -> None:
        self.bar.close()


@click.command("compare")
@click.argument("algorithms", nargs=-1)
@click.option("-b", "--benchmark", "bench", required=True, metavar="B", help="benchmark every algorithm runs on")
@click.option("--suite", metavar="NAME", help="a named set of algorithms (`metareg list --suites`), added to ALGORITHMS")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="seeds per algorithm")
@click.option("--seed", type=int, default=0, show_default=True, help="the first seed (seeds are SEED, SEED+1, ...)")
@click.option("--shots", "shots_text", metavar="K,K,...",
              help="shot counts every trained model is evaluated at (default: the benchmark's own)")
@click.option("--budget", "budget_text", metavar="steps=N|seconds=S",
              help="training budget of every run: outer steps, or seconds of training on this machine")
@click.option("--steps", type=int, help="same as --budget steps=N")
@click.option("--adapt-steps", "adapt_text", metavar="N,N,...", help="adaptation steps on new tasks (default 0,1,5)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override; ALGO.key for one algorithm, a bare algorithm key for all that have it")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.toml")
@click.option("--device", help="cpu, cuda, ...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="results folder (default runs/compare-B); the same folder again resumes and reuses finished runs")
@click.option("--jobs", type=click.IntRange(min=0), default=1, show_default=True,
              help="runs in parallel, as processes with cores/jobs threads each (0: in this process, one by one)")
@click.option("--no-save", is_flag=True, help="keep nothing (a temporary folder; the table is still printed)")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@click.pass_context
def compare(ctx, algorithms, bench, suite, seeds, seed, shots_text, budget_text, steps, adapt_text, sets, config_file,
            device, out, jobs, no_save, as_json):
    """Train ALGORITHMS (meta-learners and multi-task learners alike) on one benchmark under one
    budget, once per seed, and score every trained model at each shot count on tasks seen in
    training and on new tasks after 0, 1, 5 adaptation steps; report mean and 95% CI, training
    time, steps reached, adaptation time, parameters and memory (report.md, compare.csv,
    compare.json, plots/*.png).  Finished runs are reused: the same command again resumes.

    \b
    metareg compare --suite paradigms -b sinusoid --seeds 3 --shots 1,5,10 --budget seconds=30
    metareg compare maml hard_sharing -b sinusoid_mtl --budget steps=2000 --set hard_sharing.combiner=pcgrad
    """
    from ..study import Budget, collect, execute, parse_budget, parse_ints, plan_runs, threads_per_job

    manager = ctx.obj or get_manager()
    reg = manager.registry
    notes: list[str] = []
    suite_layer: dict = {}
    slots: dict[str, str] = {}
    algorithms = list(algorithms)
    if suite:
        from ..suites import get_suite, resolve_suite

        rs = resolve_suite(get_suite(suite, manager), bench, manager)
        bench = rs.benchmark
        notes += list(rs.notes)
        algorithms = [a for a in rs.algorithms if a not in algorithms] + algorithms
        suite_layer = dict(rs.sets)
        slots = {a: label for label, a in rs.chosen if a}
    if not algorithms:
        raise ConfigError("name the algorithms to compare, or a suite (--suite paradigms; `metareg list --suites`).")
    check_names(algorithms, manager)
    if budget_text and steps is not None:
        raise ConfigError("--steps N is --budget steps=N; pass one of them.")
    budget = parse_budget(budget_text) if budget_text else (Budget("steps", steps) if steps is not None else None)
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}.")
    user = collect_overrides(config_file, sets, device=device)
    flags: dict = {}
    if adapt_text:
        flags["run.eval_steps"] = list(parse_ints(adapt_text, "--adapt-steps"))
    track = _take_track(user)
    if budget is not None:
        flags.update(budget.layer(user_sets_steps=any(k in ("steps", "run.steps") for k in user.keys())
                                  or any(isinstance(v, dict) and "steps" in v for layer in user.layers for k, v in layer.items() if k == "run")))
    overrides = Overrides(COMPARE_DEFAULTS, suite_layer, *user.layers, flags)
    per_algo = split_overrides(algorithms, overrides, manager)
    seed_list = list(range(seed, seed + seeds))
    planned = plan_runs(algorithms, bench, per_algo, seed_list, manager)  # every config checked before any run
    first = planned[0].run
    bench_name = first.bench_spec.name
    metric = first.bench_spec.metric
    train_shots = getattr(first.bench_config, "shots", None)
    if shots_text:
        shots = list(parse_ints(shots_text, "--shots", low=1))
        from ..study import eval_config

        for k in shots:  # a K the benchmark cannot take fails here, before training
            eval_config(first.bench_spec, first.bench_config, k)
    elif train_shots is not None:
        shots = [train_shots]
    else:
        raise ConfigError(f"benchmark {bench_name} has no 'shots' setting; this comparison needs one.")
    for p in planned:
        if getattr(p.run.bench_config, "shots", None) != train_shots:
            raise ConfigError("every algorithm must train at the same shots; set benchmark.shots for all, not per algorithm.")
    adapt_steps = sorted(set(first.config.eval_steps))
    if no_save and out is not None:
        raise ConfigError("--out and --no-save contradict each other; pass one of them.")
    tmp = None
    if no_save:
        tmp = out = Path(tempfile.mkdtemp(prefix="metareg-compare-"))
    out = out or Path("runs") / f"compare-{bench_name}"
    if str(out).strip() == "":
        raise ConfigError("--out is empty; pass a folder name.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder.")
    if track:
        os.environ["METAREG_TRACK"] = track  # the runs' processes inherit it (see plugins/tracking.py)
    info = manager.registry.get("benchmark", bench_name)
    shots_unit = "per class" if info.metric == "accuracy" else "per task"
    budget_desc = str(budget) if budget else f"steps={first.config.steps}"
    threads = threads_per_job(jobs) if jobs else None
    if not as_json:
        click.echo(f"{len(algorithms)} algorithm(s) x {len(seed_list)} seed(s) on {bench_name}, budget {budget_desc}, "
                   f"trained at K={train_shots}, evaluated at K={','.join(map(str, shots))}; "
                   + (f"{jobs} job(s) x {threads} thread(s)" if jobs else "in this process") + f"; folder {out}", err=True)
        for n in notes:
            click.echo(f"note: {n}", err=True)
    guess = budget.value + 15 if budget is not None and budget.kind == "seconds" else None
    progress = _Progress(len(planned), jobs, guess, quiet=as_json)
    try:
        outcomes = execute(planned, out, bench_name, shots, jobs=jobs, on_event=progress, manager=manager)
    except KeyboardInterrupt:
        progress.close()
        click.echo(f"interrupted; finished runs are kept in {out}: run the same command again to finish the rest.", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        progress.close()
    reused = sum(o.status == "reused" for o in outcomes)
    failed = [o for o in outcomes if o.status not in ("reused", "completed")]
    families = {a: (reg.get("algorithm", a).kind, reg.get("algorithm", a).family) for a in algorithms}
    entries = aggregate(collect(planned, out, shots), metric=metric, shots=shots, adapt_steps=adapt_steps,
                        families=families, slots=slots)
    if jobs == 0:
        notes.append("--jobs 0: the runs shared one process, so peak memory is that process's up to each run, "
                      "not each run's own (use --jobs 1 or more for per-run memory).")
    for o in failed:
        notes.append(f"{o.run.label()} {o.status}: {o.message}")
    checks = paradigm_check(entries, shots, metric)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"{bench_name}: {', '.join(algorithms)}; {len(seed_list)} seed(s), budget {budget_desc}, trained at K={train_shots}"
    data = {"benchmark": bench_name, "asked_benchmark": bench, "suite": suite, "metric": metric,
            "lower_is_better": lower_is_better(metric), "shots": shots, "train_shots": train_shots, "shots_unit": shots_unit,
            "adapt_steps": adapt_steps, "seeds": seed_list, "budget": budget_desc, "jobs": jobs, "threads_per_run": threads,
            "command": "metareg " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("metareg") else None,
            "date": when, "reused_runs": reused, "entries": entries, "checks": checks, "notes": notes}
    data["csv"] = csv_rows(entries, metric=metric, shots=shots, adapt_steps=adapt_steps)
    md = render(entries, title=title, metric=metric, shots=shots, adapt_steps=adapt_steps, notes=notes, checks=checks,
                markdown=True)
    written = write_report(out, data, md)
    if as_json:
        click.echo(json.dumps({**{k: v for k, v in data.items() if k != "csv"}, "out": None if tmp else str(out)}, default=str))
    else:
        click.echo(render(entries, title=title, metric=metric, shots=shots, adapt_steps=adapt_steps, notes=notes,
                          checks=checks, markdown=False))
        if not tmp:
            click.echo(f"{reused} run(s) reused. report: " + ", ".join(str(p) for p in written), err=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise click.exceptions.Exit(1)


def _take_track(user: Overrides) -> str | None:
    """``--set run.track=...`` / ``track=...`` while the runner has no ``track`` option: taken out of
    the overrides and passed to the runs as $METAREG_TRACK (plugins/tracking.py reads either)."""
    from ..runner import RunConfig

    if "track" in {f.name for f in dataclasses.fields(RunConfig)}:
        return None
    found = None
    for layer in user.layers:
        for key in ("track", "run.track"):
            if key in layer:
                found = layer.pop(key)
        if isinstance(layer.get("run"), dict) and "track" in layer["run"]:
            found = layer["run"].pop("track")
    if found is None:
        return None
    return ",".join(found) if isinstance(found, (list, tuple)) else str(found)
