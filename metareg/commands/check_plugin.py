"""``metareg check-plugin DIST``: the project's contract checks on one installed package."""

from __future__ import annotations

import json
import time

import click

from ..errors import PluginError


@click.command("check-plugin")
@click.argument("dist")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.pass_context
def check_plugin_cmd(ctx: click.Context, dist: str, as_json: bool) -> None:
    """Run the contract checks the built-ins pass on everything the installed package DIST registers.

    Each learner trains one step and adapts on its package's benchmarks (or a cheap built-in
    one), twice with one seed; each benchmark's batches are checked and run with a built-in
    learner; each combiner and backbone is checked on its own.  Exit status 1 if any check fails.

    \b
    metareg check-plugin metareg-example
    """
    from ..contract import ContractSkip, package_checks
    from ..plugins import get_manager
    from ..registry import package_key

    m = ctx.obj or get_manager()
    reg = m.registry
    problems = [f for f in m.failures if package_key(f.package) == package_key(dist)]
    checks = list(package_checks(dist, m))
    if not checks and not problems:
        packages = sorted({s.package for c in ("algorithm", "benchmark", "backbone") for s in reg.list(c)})
        raise PluginError(f"package '{dist}' registers nothing: is it installed in this environment with a "
                          f"[project.entry-points.metareg] table? Packages with plugins: {', '.join(packages)}.")
    results = [{"check": f"loading {f.name}", "status": "failed", "detail": f.cause} for f in problems]
    for label, check in checks:
        t0 = time.perf_counter()
        try:
            check()
            status, detail = "passed", ""
        except ContractSkip as e:
            status, detail = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - a plugin's own bug is a failed check, not a crash
            status, detail = "failed", f"{type(e).__name__}: {e}" if not isinstance(e, AssertionError) else str(e)
        results.append({"check": label, "status": status, "detail": detail,
                        "seconds": round(time.perf_counter() - t0, 2)})
        if not as_json:
            mark = {"passed": "ok  ", "skipped": "skip", "failed": "FAIL"}[status]
            click.echo(f"{mark} {label}" + (f": {detail}" if detail else ""))
    failed = [r for r in results if r["status"] == "failed"]
    if as_json:
        click.echo(json.dumps({"package": dist, "results": results, "failed": len(failed)}, indent=2))
    else:
        for r in results:
            if r["check"].startswith("loading "):
                click.echo(f"FAIL {r['check']}: {r['detail']}")
        click.echo(f"{len(results) - len(failed)} of {len(results)} checks passed" + (", " + str(len(failed)) + " failed" if failed else ""))
    ctx.exit(1 if failed else 0)
