"""``metareg compare``: several algorithms on one benchmark, one seed, one table."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import click

from ..compare import check_names, comparison_rows, split_overrides, text_table, write_report
from ..errors import ConfigError
from ..plugins import get_manager
from ..overrides import collect_overrides

__all__ = ["compare"]


@click.command("compare")
@click.argument("algorithms", nargs=-1, required=True)
@click.option("-b", "--benchmark", "bench", required=True, metavar="B", help="benchmark every algorithm runs on")
@click.option("--steps", type=int, help="outer training steps for every algorithm")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override; ALGO.key for one algorithm, a bare algorithm key for all that have it")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.toml")
@click.option("--device", help="cpu, cuda, ...")
@click.option("--seed", type=int, help="the one seed every algorithm uses (default 0)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="results folder (default runs/compare-B-TIMESTAMP): one sub-folder per algorithm + the report")
@click.option("--no-save", is_flag=True, help="write no results folder (the table is still printed)")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@click.pass_context
def compare(ctx, algorithms, bench, steps, sets, config_file, device, seed, out, no_save, as_json):
    """Train ALGORITHMS (meta-learners and multi-task learners alike) on one benchmark with one seed
    and compare them on the same held-out tasks: adaptation from K examples, trained-task error
    where defined, and cost.

    \b
    metareg compare maml fomaml hard_sharing --benchmark sinusoid_mtl --steps 2000
    """
    from ..runner import Run

    manager = ctx.obj or get_manager()
    check_names(algorithms, manager)
    overrides = collect_overrides(config_file, sets, steps=steps, device=device, seed=seed)
    per_algo = split_overrides(algorithms, overrides, manager)
    if no_save and out is not None:
        raise ConfigError("--out and --no-save contradict each other; pass one of them.")
    if not no_save:
        out = out or Path("runs") / f"compare-{bench}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if str(out).strip() == "":
            raise ConfigError("--out is empty; pass a folder name.")
    # resolve every run before training any, so a typo in the last one costs nothing
    runs = {a: Run(a, bench, per_algo[a], out=None if no_save else out / a, manager=manager) for a in algorithms}
    if out is not None and out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} already contains files; choose an empty or new folder.")
    summaries = {}
    for i, (a, run) in enumerate(runs.items(), 1):
        if not as_json:
            click.echo(f"[{i}/{len(runs)}] {a} on {bench}", err=True)
        s = run.execute(progress=None if as_json else True)
        summaries[a] = s
    cols, rows = comparison_rows(summaries)
    if out is not None:
        write_report(out, bench, cols, rows)
    if as_json:
        click.echo(json.dumps({"benchmark": bench, "columns": cols, "rows": rows,
                               "out": None if out is None else str(out)}, default=str))
        return
    click.echo(text_table(cols, rows))
    if out is not None:
        click.echo(f"report: {out}/compare.csv, {out}/compare.json, {out}/plots/adaptation.png")
