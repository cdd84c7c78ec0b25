"""``metareg bench``: run the pytest-benchmark suites in benchmarks/ and print one table of ratios.

Convention for every benchmark in benchmarks/ (whoever writes it): the test sets
``benchmark.group = "<case name>"`` and ``benchmark.extra_info["role"]`` to ``"metareg"`` or
``"baseline"`` (optionally ``extra_info["label"]``, else the test name is shown).  The table shows,
per group, each baseline's median divided by metareg's median: above 1 means metareg is faster.
Absolute times are printed too but only ratios from the same run are comparable across machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

__all__ = ["bench", "ratio_rows", "format_table"]


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _label(bench: dict) -> str:
    info = bench.get("extra_info") or {}
    if info.get("label"):
        return str(info["label"])
    name = bench.get("name", "?")
    return name.split("[", 1)[0].removeprefix("test_")


def ratio_rows(data: dict) -> list[dict]:
    """One row per (group, baseline): baseline and metareg medians and their ratio.

    ``data`` is pytest-benchmark's JSON.  Groups without a metareg entry, or without baselines,
    still get a row so nothing measured silently disappears.
    """
    groups: dict[str, dict[str, list]] = {}
    for b in data.get("benchmarks", []):
        group = b.get("group") or b.get("name", "?")
        role = (b.get("extra_info") or {}).get("role", "baseline")
        groups.setdefault(group, {"metareg": [], "baseline": []})
        groups[group]["metareg" if role == "metareg" else "baseline"].append(b)
    rows = []
    for group, entries in groups.items():
        ours = entries["metareg"][0] if entries["metareg"] else None
        ours_median = ours["stats"]["median"] if ours else None
        bases = entries["baseline"] or [None]
        for base in bases:
            base_median = base["stats"]["median"] if base else None
            ratio = base_median / ours_median if base_median and ours_median else None
            rows.append({"group": group, "baseline": _label(base) if base else "-",
                         "baseline_median": base_median, "metareg": _label(ours) if ours else "-",
                         "metareg_median": ours_median, "ratio": ratio})
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("case", "baseline", "baseline median", "metareg median", "ratio (baseline / metareg)")
    body = [(r["group"], r["baseline"], _fmt_time(r["baseline_median"]), _fmt_time(r["metareg_median"]),
             f"{r['ratio']:.2f}x" if r["ratio"] else "-") for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bench_dir() -> Path:
    here = Path.cwd() / "benchmarks"
    if here.is_dir():
        return here
    checkout = Path(__file__).resolve().parents[2] / "benchmarks"  # editable install / source tree
    if checkout.is_dir():
        return checkout
    raise click.ClickException("no benchmarks/ directory here or next to the metareg sources; run from the "
                               "repository root.")


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def bench(pytest_args: tuple[str, ...]) -> None:
    """Run the benchmarks (extra PYTEST_ARGS go to pytest, e.g. -k task_step) and print one
    table: per case, each baseline's median / metareg's median."""
    where = _bench_dir()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", str(where), "--benchmark-only", f"--benchmark-json={out}",
               "--benchmark-columns=median,iqr,rounds", "-p", "no:cacheprovider", "-q", *pytest_args]
        rc = subprocess.call(cmd, cwd=where.parent)
        if not os.path.exists(out):
            raise click.ClickException(f"pytest wrote no benchmark results (exit status {rc}).")
        with open(out) as fh:
            data = json.load(fh)
    rows = ratio_rows(data)
    if not rows:
        raise click.ClickException("no benchmarks ran (check the -k expression).")
    machine = data.get("machine_info", {})
    click.echo("")
    click.echo(f"metareg bench: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
               f"{data.get('datetime', '')}")
    click.echo(format_table(rows))
    if rc not in (0, 5):
        raise SystemExit(rc)
