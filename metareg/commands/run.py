"""``metareg run``: train one algorithm on one benchmark, evaluate it on held-out tasks, save it."""

from __future__ import annotations

import datetime as _dt
import math
import os
import secrets
import subprocess
import sys
from pathlib import Path

import click

from ..errors import ConfigError
from ..evaluate import is_metric_key
from ..io import dumps_strict
from ..overrides import collect_overrides
from ..plugins import get_manager

__all__ = ["run_cmd"]


@click.command("run")
@click.argument("name", required=False)
@click.option("-b", "--benchmark", "bench", metavar="B", help="benchmark to train and evaluate on (see `metareg list`)")
@click.option("--steps", type=int, help="outer training steps (default: the algorithm's)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a hyperparameter; repeatable; qualify as algorithm./benchmark./run. when ambiguous; combiner.KEY sets an option of the multi-task combiner")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.toml",
              help="TOML file of overrides (flat keys or [algorithm]/[benchmark]/[run] tables); --set wins")
@click.option("--device", help="cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int, help="random seed (default 0)")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="results folder (default runs/NAME-B-TIMESTAMP); must be new or empty")
@click.option("--no-save", is_flag=True, help="write no results folder")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="continue the run saved in DIR from its last checkpoint (same configuration; no other options)")
@click.option("--nproc", type=click.IntRange(min=1), metavar="N",
              help="train with N processes (torch.distributed; launches torchrun --standalone on this machine)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object on stdout")
@click.pass_context
def run_cmd(ctx, name, bench, steps, sets, config_file, device, seed, out, no_save, resume, nproc, as_json):
    """Train NAME on a benchmark, then evaluate few-shot adaptation on held-out tasks.

    \b
    metareg run maml --benchmark sinusoid --steps 3000
    metareg run maml --benchmark sinusoid --set inner_steps=5 --set benchmark.shots=5
    metareg run hard_sharing --benchmark sinusoid_mtl --set combiner=equal --json
    metareg run --resume runs/maml-sinusoid-20261201-101500-3f9a2c

    Exit status: 0 done, 2 bad input (nothing written), 1 diverged (NaN/Inf), 130 / 143 interrupted
    by Ctrl-C / SIGTERM after saving a checkpoint to resume from.
    """
    from ..runner import Run

    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        ctx.exit(_launch(nproc))
    manager = ctx.obj or get_manager()
    if resume is not None:
        given = [flag for flag, v in (("NAME", name), ("--benchmark", bench), ("--steps", steps), ("--set", sets),
                                      ("--config", config_file), ("--seed", seed), ("--out", out),
                                      ("--no-save", no_save), ("--device", device)) if v]
        if given:
            raise ConfigError(f"--resume continues a run with its saved configuration; drop {', '.join(given)}.")
        run = Run.from_folder(resume, manager=manager)
        _finish(ctx, run.execute(progress=None if as_json else True, resume=True), as_json)
        return
    if name is None:
        raise ConfigError("which algorithm? `metareg run NAME --benchmark B` (see `metareg list`), or --resume DIR.")
    if bench is None:
        spec = manager.registry.get("algorithm", name)
        ok = [b.name for b in manager.registry.list("benchmark") if spec.requires <= b.provides]
        raise ConfigError(f"which benchmark? pass --benchmark B; {spec.name} runs on: {', '.join(ok) or 'none installed'}.")
    overrides = collect_overrides(config_file, sets, steps=steps, device=device, seed=seed)
    if no_save and out is not None:
        raise ConfigError("--out and --no-save contradict each other; pass one of them.")
    if out is not None and out.strip() == "":  # Path("") would be ".", the current folder
        raise ConfigError("--out is empty; pass a folder name.")
    out = Path(out) if out is not None else None
    if no_save:
        out_dir = None
    elif out is not None:
        out_dir = out
    else:
        # a timestamp and a random suffix: two runs started in the same second never share a folder
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / f"{name.replace(':', '_')}-{bench.replace(':', '_')}-{stamp}-{secrets.token_hex(3)}"
    run = Run(name, bench, overrides, out=out_dir, manager=manager)
    if run.suggested:
        click.echo(f"note: benchmark {run.bench_spec.name} suggests "
                   + ", ".join(f"{k}={v}" for k, v in run.suggested.items())
                   + f" for {run.algo_spec.name} (applied and saved in config.json; --set overrides)", err=True)
    _finish(ctx, run.execute(progress=None if as_json else True), as_json)


def _launch(nproc: int) -> int:
    """Run this very command under torchrun with ``nproc`` processes on this machine."""
    from ..cli import invocation_args

    args = list(invocation_args())
    for i, a in enumerate(args):
        if a == "--nproc":
            del args[i: i + 2]
            break
        if a.startswith("--nproc="):
            del args[i]
            break
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "metareg",
           *args]
    return subprocess.run(cmd).returncode


def _finish(ctx: click.Context, summary: dict, as_json: bool) -> None:
    if summary.get("rank", 0) != 0:  # rank 0 reports for the whole run
        return
    if as_json:
        click.echo(dumps_strict(summary))
    else:
        _print_summary(summary)
    status = summary.get("status")
    if status == "interrupted":
        where = f"; continue it with `metareg run --resume {summary['out']}`" if "out" in summary else ""
        click.echo(f"interrupted by {summary.get('interrupted_by')} after step {summary['steps']}{where}", err=True)
        ctx.exit(143 if summary.get("interrupted_by") == "SIGTERM" else 130)
    if status == "diverged":
        click.echo(f"Error: diverged: {summary.get('diverged')} (--set run.on_nonfinite=skip skips such steps)", err=True)
        ctx.exit(1)


def _sampling(s: dict) -> str:
    share = s.get("sample_share")  # absent in summaries written before it was measured
    return "" if share is None else f", {100 * share:.1f}% of it drawing tasks"


def _print_summary(s: dict) -> None:
    status = s["status"]
    loss = s.get("final_loss")
    click.echo(f"{s['algorithm']} on {s['benchmark']}: {status} after {s['steps']} steps "
               f"({s['train_time_s']:.1f} s, {s['steps_per_s']} steps/s{_sampling(s)}), "
               f"final training loss {'-' if loss is None else f'{loss:.4f}'}")
    keys = [k for k in s if (is_metric_key(k, s.get("metric")) or f"{k}_ci95" in s) and not k.endswith("_ci95")
            and not k.startswith("train_tasks_") and isinstance(s[k], float)]
    if keys:
        click.echo(f"held-out tasks ({s.get('eval_tasks')}), mean ± 95% CI:")
        for k in keys:
            ci = s.get(k + "_ci95", math.nan)
            click.echo(f"  {k:<28} {s[k]:.4f} ± {ci:.4f}")
    for k in [k for k in s if k.startswith("train_tasks_") and is_metric_key(k, s.get("metric"))]:
        click.echo(f"training tasks, fresh samples, mean ± 95% CI over tasks:\n  {k:<28} {s[k]:.4f} ± "
                   f"{s.get(k + '_ci95', math.nan):.4f}")
    if "out" in s:
        click.echo(f"results: {s['out']}")
