"""The cross-paradigm comparison: several algorithms, one benchmark, one seed, one protocol.

Every algorithm is trained by the same runner on the same task distribution with the same seed,
then scored on the same held-out tasks (the evaluation generator depends only on the seed), so a
difference in the table is a difference between algorithms.  The report puts side by side what
each does on the tasks it trained on (where the learner can say: multi-task heads), how well it
adapts to new tasks after 0, 1, ... steps from K examples, and what it costs (parameters, seconds
per training step, peak memory).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .plugins import PluginManager, get_manager
from .evaluate import is_metric_key
from .overrides import Overrides, split_per_algorithm
from .runner import RunConfig, write_json_atomic
from .text import table

__all__ = ["split_overrides", "comparison_rows", "write_report"]

COST_KEYS = ("num_params", "steps_per_s", "train_time_s", "eval_time_s", "peak_memory_mb")


def split_overrides(algorithms: Sequence[str], overrides: Overrides | Mapping[str, Any] | None,
                    manager: PluginManager | None = None) -> dict[str, Overrides]:
    """Per-algorithm overrides from one shared set (the rules: :func:`metareg.overrides.split_per_algorithm`)."""
    reg = (manager or get_manager()).registry
    fields = {a: [f.name for f in dataclasses.fields(reg.get("algorithm", a).config)] for a in algorithms}
    return split_per_algorithm(algorithms, overrides, fields, [f.name for f in dataclasses.fields(RunConfig)])


def comparison_rows(summaries: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns (metric names first, in evaluation order, then costs) and one row per algorithm."""
    metric_cols: list[str] = []
    for s in summaries.values():
        for k in s:
            if is_metric_key(k, s.get("metric")) and isinstance(s[k], (int, float)) and k not in metric_cols:
                metric_cols.append(k)
    rows = []
    for name, s in summaries.items():
        row = {"algorithm": name, "kind": s.get("kind", ""), "status": s.get("status", "")}
        for k in metric_cols:
            row[k] = s.get(k)
            row[k + "_ci95"] = s.get(k + "_ci95")
        for k in COST_KEYS:
            row[k] = s.get(k)
        rows.append(row)
    return metric_cols, rows


def _fmt(v: Any, ci: Any = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" + (f" ± {ci:.4f}" if isinstance(ci, float) and not math.isnan(ci) else "")
    return str(v)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,.1f}"


def text_table(metric_cols: list[str], rows: list[dict[str, Any]]) -> str:
    headers = ["algorithm", "kind", *metric_cols, "params", "steps/s", "peak MB"]
    body = [[r["algorithm"], r["kind"], *(_fmt(r[k], r[k + "_ci95"]) for k in metric_cols),
             _fmt(r["num_params"]), _num(r["steps_per_s"]), _num(r["peak_memory_mb"])] for r in rows]
    return table(body, headers)


def write_report(out: Path, benchmark: str, metric_cols: list[str], rows: list[dict[str, Any]]) -> list[Path]:
    """compare.json, compare.csv and plots/adaptation.png in ``out``; returns the paths written."""
    written = []
    write_json_atomic(out / "compare.json", {"benchmark": benchmark, "columns": metric_cols, "rows": rows})
    written.append(out / "compare.json")
    tmp = out / "compare.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "compare.csv")
    written.append(out / "compare.csv")
    png = plot_adaptation(out / "plots" / "adaptation.png", benchmark, metric_cols, rows)
    if png is not None:
        written.append(png)
    return written


def _steps_of(col: str) -> int | None:
    if col.endswith("_before"):
        return 0
    parts = col.split("_after_")
    if len(parts) == 2:
        n = parts[1].split("_")[0]
        return int(n) if n.isdigit() else None
    return None


def plot_adaptation(path: Path, benchmark: str, metric_cols: list[str], rows: list[dict[str, Any]]) -> Path | None:
    """Metric against adaptation steps, one line per algorithm (flat for metric-based learners)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stepwise = [(c, _steps_of(c)) for c in metric_cols if _steps_of(c) is not None]
    if not stepwise and not any(c in ("accuracy", "mse") for c in metric_cols):
        return None
    xs = sorted({k for _, k in stepwise}) or [0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        pts = [(k, r[c], r[c + "_ci95"]) for c, k in stepwise if r.get(c) is not None]
        if not pts:
            plain = next((c for c in ("accuracy", "mse") if r.get(c) is not None), None)
            if plain is None:
                continue
            pts = [(k, r[plain], r[plain + "_ci95"]) for k in xs]
            style = "--"
        else:
            style = "-o"
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], fmt=style,
                    capsize=3, label=r["algorithm"])
    metric = (stepwise[0][0] if stepwise else metric_cols[0]).split("_")[0]
    ax.set_xlabel("adaptation steps on the support set")
    ax.set_ylabel(f"held-out {metric} (mean ± 95% CI)")
    ax.set_title(f"few-shot adaptation on {benchmark}")
    ax.set_xticks(xs)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def check_names(algorithms: Sequence[str], manager: PluginManager | None = None) -> None:
    reg = (manager or get_manager()).registry
    if len(set(algorithms)) != len(algorithms):
        raise ConfigError("each algorithm may appear once in a comparison.")
    for a in algorithms:
        spec = reg.get("algorithm", a)
        if spec.role != "learner":
            raise ConfigError(f"'{a}' is a combiner; compare learners, e.g. hard_sharing with --set "
                              f"hard_sharing.combiner={a}.")
