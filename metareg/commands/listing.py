"""``metareg list``, ``metareg info`` and ``metareg plugins``: what is installed and how to use it."""

from __future__ import annotations

import json
import textwrap

import click

from ..config import describe
from ..errors import UnknownNameError, did_you_mean
from ..plugins import get_manager
from ..registry import CAPABILITIES, FAMILIES, KINDS
from ..text import table

__all__ = ["list_cmd", "info_cmd", "plugins_cmd"]


def _manager(ctx: click.Context):
    return ctx.obj or get_manager()


@click.command("list")
@click.argument("pattern", required=False)
@click.option("--kind", type=click.Choice(["meta", "multitask"]), help="only meta-learning or multi-task entries")
@click.option("--suites", "show_suites", is_flag=True, help="list the comparison suites (`metareg compare --suite NAME`)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.pass_context
def list_cmd(ctx: click.Context, pattern: str | None, kind: str | None, show_suites: bool, as_json: bool) -> None:
    """List algorithms (learners and multi-task combiners), benchmarks and backbones.

    PATTERN filters names by glob (``*sgd*``) or substring.  ``--suites``: the named comparison
    suites instead, with the algorithm each slot picks on each benchmark the suite maps.
    """
    m = _manager(ctx)
    reg = m.registry
    if show_suites:
        _list_suites(m, pattern, as_json)
        return
    algos = reg.list("algorithm", pattern, kind=kind)
    benches = [] if kind else reg.list("benchmark", pattern)
    backbones = [] if kind else reg.list("backbone", pattern)
    if as_json:
        out = {
            "algorithms": [
                {"name": s.name, "ref": reg.ref(s), "kind": s.kind, "role": s.role, "family": s.family, "summary": s.summary,
                 "paper": s.paper, "plugin": s.plugin, "package": s.package, "requires": sorted(s.requires)}
                for s in algos
            ],
            "benchmarks": [
                {"name": s.name, "ref": reg.ref(s), "summary": s.summary, "provides": sorted(s.provides), "metric": s.metric,
                 "paper": s.paper, "plugin": s.plugin, "package": s.package}
                for s in benches
            ],
            "backbones": [{"name": s.name, "ref": reg.ref(s), "summary": s.summary, "plugin": s.plugin, "package": s.package}
                          for s in backbones],
            "plugin_errors": [f.line() for f in m.failures],
        }
        click.echo(json.dumps(out, indent=2))
        return
    wide = {3: 60, 4: 40}
    if algos:
        click.echo(table([[reg.ref(s), s.kind, s.family if s.role == "learner" else f"{s.family} (combiner)", s.summary, s.paper,
                           f"{s.plugin} ({s.package})"] for s in algos],
                         ["name", "kind", "family", "summary", "paper", "plugin (package)"], wide))
    if benches:
        click.echo("\nbenchmarks")
        click.echo(table([[reg.ref(s), ", ".join(sorted(s.provides)), s.metric, s.summary, f"{s.plugin} ({s.package})"] for s in benches],
                         ["name", "provides", "metric", "summary", "plugin (package)"], {3: 70}))
    if backbones:
        click.echo("\nbackbones")
        click.echo(table([[reg.ref(s), s.summary, f"{s.plugin} ({s.package})"] for s in backbones],
                         ["name", "summary", "plugin (package)"], {1: 80}))
    if not (algos or benches or backbones):
        click.echo(f"nothing matches {pattern!r}" if pattern else "nothing is registered: is metareg installed (pip install -e .)?")


def _list_suites(m, pattern: str | None, as_json: bool) -> None:
    import fnmatch

    from ..suites import resolve_suite, suites

    every = {n: s for n, s in suites(m).items()
             if not pattern or pattern in n or fnmatch.fnmatch(n, pattern)}
    rows = []
    for name, s in every.items():
        picks = {}
        for asked in sorted(s.benchmarks) or []:
            try:
                r = resolve_suite(s, asked, m)
                picks[asked] = {"benchmark": r.benchmark, "algorithms": list(r.algorithms),
                                "empty_slots": [label for label, a in r.chosen if a is None]}
            except Exception as e:  # noqa: BLE001 - a benchmark not installed: say so, list the rest
                picks[asked] = {"error": str(e)}
        rows.append({"name": name, "description": s.description, "slots": {k: list(v) for k, v in s.slots},
                     "benchmarks": dict(s.benchmarks), "sets": dict(s.sets), "plugin": s.plugin, "package": s.package,
                     "on": picks})
    if as_json:
        click.echo(json.dumps({"suites": rows, "plugin_errors": [f.line() for f in m.failures]}, indent=2, default=str))
        return
    if not rows:
        click.echo(f"no suite matches {pattern!r}" if pattern else "no suite is installed.")
        return
    click.echo(table([[r["name"], r["description"], f"{r['plugin']} ({r['package']})"] for r in rows],
                     ["suite", "description", "plugin (package)"], {1: 90}))
    for r in rows:
        click.echo(f"\n{r['name']}: slots " + "; ".join(f"{k}: {' > '.join(v)}" for k, v in r["slots"].items()))
        for asked, p in r["on"].items():
            if "error" in p:
                click.echo(f"  -b {asked}: {p['error']}")
            else:
                empty = f" (empty: {', '.join(p['empty_slots'])})" if p["empty_slots"] else ""
                click.echo(f"  -b {asked} -> {p['benchmark']}: {', '.join(p['algorithms'])}{empty}")
    click.echo("\nmetareg compare --suite NAME -b B; other benchmarks run as asked, each slot taking the first candidate "
               "that runs on it.")


def _fmt_default(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def _vocabulary(as_json: bool) -> None:
    from ..hookspecs import hook_docs

    vocab = {"kinds": dict(KINDS), "families": dict(FAMILIES), "capabilities": dict(CAPABILITIES), "hooks": hook_docs()}
    if as_json:
        click.echo(json.dumps(vocab, indent=2))
        return
    click.echo("What a plugin may declare (anything else is refused when it registers):\n")
    click.echo(table([[k, v] for k, v in KINDS.items()], ["kind", "meaning"]))
    click.echo()
    click.echo(table([[k, v] for k, v in FAMILIES.items()], ["family", "meaning"]))
    click.echo()
    click.echo(table([[k, v] for k, v in CAPABILITIES.items()] + [["package.name", "a capability of your own (dotted)"]],
                     ["provides / requires", "meaning"]))
    click.echo()
    click.echo(table([[k, v] for k, v in vocab["hooks"].items()], ["hook", "what it is for"], {1: 90}))
    click.echo("\nmetareg info NAME shows one algorithm, benchmark or backbone; the README's 'Writing a plugin' has examples.")


@click.command("info")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def info_cmd(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Hyperparameters (type, default, doc) of an algorithm or benchmark, and what it runs on.

    Without NAME: the kinds, families and capabilities a plugin may declare, and the hooks.
    """
    from ..runner import RunConfig

    if name is None:
        _vocabulary(as_json)
        return
    m = _manager(ctx)
    reg = m.registry
    spec = None
    for category in ("algorithm", "benchmark", "backbone"):
        try:
            spec = reg.get(category, name)
            break
        except UnknownNameError:
            continue
    if spec is None:
        every = reg.names("algorithm") + reg.names("benchmark") + reg.names("backbone")
        raise UnknownNameError(f"nothing is registered as '{name}'." + did_you_mean(name.partition(".")[0], every) + " See `metareg list`.")
    params = describe(spec.config) if hasattr(spec, "config") else []
    compatible: list[str] = []
    if spec.category == "algorithm" and spec.role == "learner":
        compatible = [reg.ref(b) for b in reg.list("benchmark") if spec.requires <= b.provides]
    elif spec.category == "benchmark":
        compatible = [reg.ref(a) for a in reg.list("algorithm") if a.role == "learner" and a.requires <= spec.provides]
    if as_json:
        out = {"name": spec.name, "category": spec.category, "summary": spec.summary, "paper": getattr(spec, "paper", ""),
               "plugin": spec.plugin, "package": spec.package,
               "hyperparameters": [{"name": p.name, "type": p.type, "default": p.default, "doc": p.doc} for p in params],
               "compatible": compatible}
        if spec.category == "algorithm":
            out.update(kind=spec.kind, family=spec.family, role=spec.role, run_defaults=dict(spec.run_defaults),
                       presets={k: dict(v) for k, v in spec.presets.items()})
        click.echo(json.dumps(out, indent=2, default=list))
        return
    title = f"{spec.name} ({spec.category}"
    if spec.category == "algorithm":
        title += f", {spec.kind}, {spec.family}{', combiner' if spec.role == 'combiner' else ''}"
    click.echo(title + ")")
    click.echo(textwrap.fill(spec.summary, 100))
    if getattr(spec, "paper", ""):
        click.echo(f"paper:   {spec.paper}")
    click.echo(f"plugin:  {spec.plugin} (package {spec.package})")
    if params:
        click.echo("\nhyperparameters (--set key=value)")
        click.echo(table([[p.name, p.type, _fmt_default(p.default), p.doc] for p in params], ["name", "type", "default", "doc"], {3: 70}))
    if spec.category == "algorithm" and spec.presets:
        click.echo("\npresets: " + ", ".join(f"{spec.name}.{k} ({', '.join(f'{a}={b}' for a, b in v.items())})" for k, v in spec.presets.items()))
    if spec.category == "algorithm" and spec.run_defaults:
        click.echo("run defaults: " + ", ".join(f"{k}={v}" for k, v in spec.run_defaults.items()))
    if spec.category == "algorithm" and spec.role == "learner":
        click.echo("\nrequires: " + (", ".join(f"{c} ({CAPABILITIES.get(c, 'a plugin capability')})"
                                               for c in sorted(spec.requires)) or "nothing"))
        click.echo("compatible benchmarks: " + (", ".join(compatible) or "none installed"))
        click.echo("run options (--set run.key=value or the flags of `metareg run`): "
                   + ", ".join(p.name for p in describe(RunConfig)))
    elif spec.category == "algorithm":
        click.echo("\nuse with a multi-task learner: metareg run hard_sharing --benchmark sinusoid_mtl --set combiner=" + spec.name)
    elif spec.category == "benchmark":
        click.echo(f"\nprovides: {', '.join(sorted(spec.provides))}; metric: {spec.metric}")
        if spec.algorithm_defaults:
            click.echo("suggests to algorithms: " + ", ".join(f"{k}={v}" for k, v in spec.algorithm_defaults.items())
                       + " (where the algorithm has the field; --set overrides)")
        click.echo("learners that run on it: " + (", ".join(compatible) or "none installed"))


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--strict", is_flag=True, help="exit with status 2 if any plugin failed to load")
@click.pass_context
def plugins_cmd(ctx: click.Context, as_json: bool, strict: bool) -> None:
    """Loaded plugins (package, version, hooks, what they registered) and load errors."""
    m = _manager(ctx)
    m.registry  # registration hooks run here, so their failures are listed too
    if as_json:
        click.echo(json.dumps({
            "plugins": [vars(p) for p in m.plugins.values()],
            "errors": [{k: v for k, v in vars(f).items() if k != "detail"} for f in m.failures],
        }, indent=2))
    else:
        click.echo(table([[p.name, p.package, p.version, ", ".join(p.hooks), ", ".join(r.split(":", 1)[1] for r in p.registered)]
                          for p in m.plugins.values()], ["plugin", "package", "version", "hooks", "registers"], {3: 50, 4: 50}))
        if m.failures:
            click.echo("\nload errors")
            for f in m.failures:
                click.echo(f"  {f.line()}")
    if strict:
        m.raise_failures()
