"""``metareg eval RUN_DIR``: evaluate a saved run again, e.g. after more adaptation steps, or on
tasks of your own (``--tasks FILE``)."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import click

from ..evaluate import is_metric_key
from ..overrides import parse_sets


@click.command("eval")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="evaluation options only: eval_steps, eval_tasks, eval_chunk, device")
@click.option("--tasks", "tasks_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="evaluate on these tasks instead of the benchmark's held-out ones: a .pt (torch.save) or .npz "
                   "file with support_x, support_y, query_x, query_y, each [T, N, ...] (see the README)")
@click.option("--shots", type=click.IntRange(min=1), metavar="K",
              help="give each held-out task K support examples (per class) instead of the K the run trained "
                   "with, e.g. a 1-shot model tested at 5 shots; the same tasks otherwise (what `metareg compare "
                   "--shots` scores)")
@click.option("--no-save", is_flag=True, help="do not write eval-TIMESTAMP.json into the run folder")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object on stdout")
@click.pass_context
def eval_cmd(ctx, folder, sets, tasks_file, shots, no_save, as_json):
    """Re-evaluate the run saved in FOLDER on held-out tasks, from its checkpoint.

    The tasks are the ones its own final evaluation used (same seed), so with the run's settings
    the numbers are its summary's; change what is measured with --set, or score your own tasks:

    \b
    metareg eval runs/maml-glyphs-20261127 --set "eval_steps=[0,1,3,5,10]"
    metareg eval runs/maml-sinusoid-20261127 --tasks my_tasks.pt
    metareg eval runs/protonet-glyphs-20261127 --shots 5
    """
    from ..evaluate import evaluate_tasks, load_task_file
    from ..plugins import get_manager
    from ..io import write_json
    from ..runner import load_run

    if shots is not None and tasks_file is not None:
        raise click.UsageError("--shots and --tasks contradict each other: a task file brings its own support sets.")
    run = load_run(folder, parse_sets(sets), manager=ctx.obj or get_manager())
    cfg = run.config
    if shots is not None:
        from ..study import evaluate_new_tasks_at_shots

        scores = evaluate_new_tasks_at_shots(run, shots)
    elif tasks_file is not None:
        batch = load_task_file(tasks_file, run.bench.info)
        scores = evaluate_tasks(run.learner, batch, run.bench.info, steps=cfg.eval_steps, chunk=cfg.eval_chunk,
                                device=run.device, dtype=run.dtype)
    else:
        scores = run.evaluate(cfg.eval_tasks)
    result = {"algorithm": run.algo_spec.name, "benchmark": run.bench_spec.name,
              "checkpoint_step": run.checkpoint_step, "eval_steps": list(cfg.eval_steps),
              "metric": run.bench.info.metric, "tasks": str(tasks_file) if tasks_file else "held-out",
              **({"shots": shots, "train_shots": getattr(run.bench_config, "shots", None)} if shots else {}), **scores}
    if not no_save:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        write_json(folder / f"eval-{stamp}.json", result, what="the evaluation")
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    where = f"tasks of {tasks_file}" if tasks_file else "held-out tasks" + (f" at {shots} shots" if shots else "")
    click.echo(f"{result['algorithm']} on {result['benchmark']} (checkpoint of step {result['checkpoint_step']}), "
               f"{result.get('eval_tasks')} {where}, mean ± 95% CI:")
    for k, v in result.items():
        if isinstance(v, float) and is_metric_key(k, result["metric"]):
            click.echo(f"  {k:<28} {v:.4f} ± {result.get(k + '_ci95', math.nan):.4f}")
