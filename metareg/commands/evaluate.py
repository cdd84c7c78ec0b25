"""``metareg eval RUN_DIR``: evaluate a saved run again, e.g. after more adaptation steps."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import click

from .run import parse_sets


@click.command("eval")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="evaluation options only: eval_steps, eval_tasks, eval_chunk, device")
@click.option("--no-save", is_flag=True, help="do not write eval-TIMESTAMP.json into the run folder")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object on stdout")
@click.pass_context
def eval_cmd(ctx, folder, sets, no_save, as_json):
    """Re-evaluate the run saved in FOLDER on held-out tasks, from its checkpoint.

    The tasks are the ones its own final evaluation used (same seed), so with the run's settings
    the numbers are its summary's; change what is measured with --set:

    \b
    metareg eval runs/maml-glyphs-20261127 --set "eval_steps=[0,1,3,5,10]"
    """
    from ..plugins import get_manager
    from ..runner import load_run, write_json_atomic

    run = load_run(folder, parse_sets(sets), manager=ctx.obj or get_manager())
    cfg = run.config
    result = {"algorithm": run.algo_spec.name, "benchmark": run.bench_spec.name,
              "checkpoint_step": run.checkpoint_step, "eval_steps": list(cfg.eval_steps),
              **run.evaluate(cfg.eval_tasks, seed_offset=2)}
    if not no_save:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        write_json_atomic(folder / f"eval-{stamp}.json", result)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    click.echo(f"{result['algorithm']} on {result['benchmark']} (checkpoint of step {result['checkpoint_step']}), "
               f"{result.get('eval_tasks')} held-out tasks, mean ± 95% CI:")
    for k, v in result.items():
        if k.endswith("_ci95") or not isinstance(v, float) or not k.startswith(("mse", "accuracy")):
            continue
        click.echo(f"  {k:<28} {v:.4f} ± {result.get(k + '_ci95', math.nan):.4f}")
