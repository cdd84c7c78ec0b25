"""The comparison's plots (PNG, matplotlib's Agg backend): score against shots on seen and new
tasks side by side, score against adaptation steps at each K, and the costs as bars.  One colour
per algorithm in every figure; meta-learners solid, multi-task learners dashed; every line and bar
colour is in a legend; axes carry their units."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .evaluate import metric_name

__all__ = ["plot_all"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Render, write atomically (never through a planted symlink) and close the figure."""
    import io

    from .io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    write_atomic(path, buf.getvalue(), what="a plot")
    return path


def _style(entries):
    plt = _plt()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {e["algorithm"]: (colors[i % len(colors)], "-" if e["kind"] == "meta" else "--", "o" if e["kind"] == "meta" else "s")
            for i, e in enumerate(entries)}


def _ylabel(data: Mapping[str, Any], what: str) -> str:
    better = "lower" if data["lower_is_better"] else "higher"
    return f"{what} {data['metric']} ({better} is better)\nmean ± 95% CI over seeds and tasks"


def _scale(axes, values, ylabel: str) -> str:
    """A log y-axis where the means span more than two decades (a diverged adaptation at 1e13 beside
    0.03 would flatten every other line); the label says so."""
    vals = [v for v in values if v == v]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
        for ax in axes:
            ax.set_yscale("log", nonpositive="clip")
        return ylabel.replace("\n", " (log scale)\n", 1) if "\n" in ylabel else ylabel + " (log scale)"
    return ylabel


def plot_shots(path: Path, data: Mapping[str, Any]) -> Path:
    plt = _plt()
    entries, shots = data["entries"], data["shots"]
    style = _style(entries)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    means: list[float] = []
    for ax, part, title in ((axes[0], "seen", "tasks seen in training"), (axes[1], "new", "new tasks")):
        for e in entries:
            pts = []
            for k in shots:
                sc = e["scores"].get(str(k)) or e["scores"].get(k) or {}
                v = sc.get("seen") if part == "seen" else sc.get("new_final")
                if v is not None:
                    pts.append((k, v["mean"], v.get("ci95") or 0.0))
            if not pts:
                continue
            means += [p[1] for p in pts]
            color, ls, marker = style[e["algorithm"]]
            how = ""
            if part == "seen":
                src = next(((e["scores"].get(str(k)) or e["scores"].get(k) or {}).get("seen_source") for k in shots), None)
                how = " (trained heads)" if src == "heads" else " (adapted on K)"
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color, ls=ls,
                        marker=marker, capsize=3, label=f"{e['algorithm']} [{e['kind']}]{how}")
        ax.set_title(f"{title} ({data['benchmark']})")
        ax.set_xlabel(f"shots K (support examples {data['shots_unit']})")
        ax.set_xticks(list(shots))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no learner can be scored here", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel(_scale(axes, means, _ylabel(data, "")))
    fig.suptitle(f"{data['metric']} against shots; learners that take steps: after the adaptation steps "
                 "their validation tasks chose", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_adaptation(path: Path, data: Mapping[str, Any]) -> Path:
    plt = _plt()
    entries, shots, steps = data["entries"], data["shots"], data["adapt_steps"]
    style = _style(entries)
    fig, axes = plt.subplots(1, len(shots), figsize=(4.2 * len(shots) + 1, 4.2), sharey=True, squeeze=False)
    means: list[float] = []
    for ax, k in zip(axes[0], shots):
        for e in entries:
            sc = e["scores"].get(str(k)) or e["scores"].get(k) or {}
            color, ls, marker = style[e["algorithm"]]
            if sc.get("stepwise", True):
                pts = [(s, sc["new"][metric_name(data["metric"], s)]) for s in steps
                       if metric_name(data["metric"], s) in sc.get("new", {})]
                if pts:
                    means += [p[1]["mean"] for p in pts]
                    ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1].get("ci95") or 0 for p in pts],
                                color=color, ls=ls, marker=marker, capsize=3, label=f"{e['algorithm']} [{e['kind']}]")
            elif sc.get("new_final"):
                v = sc["new_final"]
                means.append(v["mean"])
                ax.plot([min(steps), max(steps)], [v["mean"]] * 2, color=color, ls=":", lw=2,
                        label=f"{e['algorithm']} [{e['kind']}] (adapts without steps)")
        ax.set_title(f"new tasks, K={k} ({data['benchmark']})")
        ax.set_xlabel("adaptation steps on the support set (count)")
        ax.set_xticks(list(steps))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(_scale(axes[0], means, _ylabel(data, "new-task")))
    fig.tight_layout()
    return _save(fig, path)


def plot_cost(path: Path, data: Mapping[str, Any]) -> Path:
    plt = _plt()
    entries = data["entries"]
    style = _style(entries)
    panels = (("train_time_s", "training time (s)", "training (steps reached on the bars)"),
              ("adapt_time_per_task_ms", "adaptation time per new task (ms)", "adapting to a new task"),
              ("peak_memory_mb", "peak memory of the run's process (MB)", "memory"),
              ("num_params", "trainable parameters (count)", "model size"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.2))
    names = [e["algorithm"] for e in entries]
    for ax, (key, ylabel, title) in zip(axes, panels):
        for i, e in enumerate(entries):
            s = e["cost"].get(key)
            if not s:
                continue
            bar = ax.bar(i, s["mean"], color=style[e["algorithm"]][0], label=f"{e['algorithm']} [{e['kind']}]",
                         yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]] if s["max"] > s["min"] else None, capsize=3)
            if key == "train_time_s" and e["cost"].get("steps"):
                ax.bar_label(bar, labels=[f"{e['cost']['steps']['mean']:,.0f}\nsteps"], label_type="center", fontsize=7,
                             color="white")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("algorithm")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle(f"cost on {data['benchmark']} (bars: mean over seeds; whiskers: range)", fontsize=10, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.9))
    return _save(fig, path)


def plot_all(folder: Path, data: Mapping[str, Any]) -> list[Path]:
    if not data["entries"]:
        return []
    return [plot_shots(folder / "shots.png", data), plot_adaptation(folder / "adaptation.png", data),
            plot_cost(folder / "cost.png", data)]
