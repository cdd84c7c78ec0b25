"""The comparison's report: per algorithm, mean and 95% CI over seeds and tasks of the scores on
seen and new tasks at each shot count, against adaptation steps, and the costs; as tables
(``report.md``, also printed), ``compare.csv``, ``compare.json`` and PNG plots.

Intervals: each seed's score is a mean over tasks with its own CI.  Over S seeds the mean is the
mean of the seed means and its standard error sqrt(max(s_b^2, w) / S), s_b^2 the variance between
seed means (training randomness plus task sampling) and w the mean squared standard error within a
seed (task sampling alone), so the interval is never narrower than the tasks alone make it; the
quantile is Student's t with S - 1 degrees of freedom where the seeds' spread dominates (4.30 for
3 seeds), 1.96 where the tasks' does.  With one seed it is that seed's CI over tasks.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .evaluate import metric_name
from .io import write_atomic, write_json
from .overrides import Overrides, split_per_algorithm
from .plugins import PluginManager, get_manager
from .runner import RunConfig
from .text import table

__all__ = ["split_overrides", "check_names", "aggregate", "paradigm_check", "report_tables", "write_report",
           "lower_is_better", "combine"]

#: Student's t 0.975 quantiles, 1..10 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
COST_KEYS = ("steps", "train_time_s", "steps_per_s", "adapt_time_per_task_ms", "num_params", "peak_memory_mb")


def split_overrides(algorithms: Sequence[str], overrides: Overrides | Mapping[str, Any] | None,
                    manager: PluginManager | None = None) -> dict[str, Overrides]:
    """Per-algorithm overrides from one shared set (the rules: :func:`metareg.overrides.split_per_algorithm`)."""
    reg = (manager or get_manager()).registry
    fields = {a: [f.name for f in dataclasses.fields(reg.get("algorithm", a).config)] for a in algorithms}
    return split_per_algorithm(algorithms, overrides, fields, [f.name for f in dataclasses.fields(RunConfig)])


def check_names(algorithms: Sequence[str], manager: PluginManager | None = None) -> None:
    reg = (manager or get_manager()).registry
    if len(set(algorithms)) != len(algorithms):
        raise ConfigError("each algorithm may appear once in a comparison.")
    for a in algorithms:
        spec = reg.get("algorithm", a)
        if spec.role != "learner":
            raise ConfigError(f"'{a}' is a combiner; compare learners, e.g. hard_sharing with --set "
                              f"hard_sharing.combiner={a}.")


def lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return m in ("mse", "mae", "rmse", "nll") or m.endswith(("error", "loss"))


def combine(means: Sequence[float], cis: Sequence[float | None]) -> tuple[float, float]:
    """Mean and 95% CI over seeds of per-seed (mean, CI over tasks); see the module docstring."""
    n = len(means)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(means) / n
    ses = [(c / 1.96) ** 2 for c in cis if isinstance(c, (int, float)) and math.isfinite(c)]
    w = sum(ses) / len(ses) if ses else 0.0
    if n == 1:
        return mean, (cis[0] if isinstance(cis[0], (int, float)) else float("nan"))
    sb2 = sum((m - mean) ** 2 for m in means) / (n - 1)
    q = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) if sb2 > w else 1.96
    return mean, q * math.sqrt(max(sb2, w) / n)


def _stat(vals: Sequence[float]) -> dict[str, float] | None:
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}


def aggregate(rows: Sequence[Mapping[str, Any]], *, metric: str, shots: Sequence[int], adapt_steps: Sequence[int],
              families: Mapping[str, tuple[str, str]], slots: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One entry per algorithm (in the order of ``rows``) from :func:`metareg.study.collect`'s rows."""
    by_algo: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_algo.setdefault(r["algorithm"], []).append(r)
    out = []
    for algo, runs in by_algo.items():
        kind, family = families.get(algo, ("", ""))
        done = [r for r in runs if r["summary"] and r["summary"].get("status") == "completed"]
        entry: dict[str, Any] = {
            "algorithm": algo, "kind": kind, "family": family, "slot": (slots or {}).get(algo, ""),
            "seeds": [r["seed"] for r in done], "runs": [r["folder"] for r in runs],
            "status": "completed" if len(done) == len(runs) else ("partial" if done else "failed"),
            "cost": {k: _stat([r["summary"].get(k) for r in done]) for k in COST_KEYS},
            "stopped_by": sorted({r["summary"].get("stopped_by") for r in done if r["summary"].get("stopped_by")}),
            "scores": {}, "notes": [],
            # each seed's own numbers, as its run and evaluations wrote them (traceable to the folders)
            "per_seed": [{"seed": r["seed"], "folder": r["folder"],
                          "summary": {k: r["summary"].get(k) for k in (*COST_KEYS, "stopped_by", "status")},
                          "evals": {k: ({n: v for n, v in e.items() if n != "key"} if e else None)
                                    for k, e in r["evals"].items()}} for r in done],
        }
        for k in shots:
            evals = [r["evals"].get(k) for r in done]
            errors = sorted({e["error"] for e in evals if e and e.get("error")})
            ok = [e for e in evals if e and not e.get("error")]
            sc: dict[str, Any] = {"new": {}, "seen": None, "seen_source": None, "n_seeds": len(ok)}
            if errors:
                entry["notes"].append(f"K={k}: " + "; ".join(errors))
            if ok:
                stepwise = any(metric_name(metric, s) in ok[0]["new"] for s in adapt_steps)
                names = [metric_name(metric, s) for s in adapt_steps] if stepwise else [metric]
                for name in names:
                    vals = [(e["new"].get(name), e["new"].get(name + "_ci95")) for e in ok]
                    vals = [(m, c) for m, c in vals if isinstance(m, (int, float))]
                    if vals:
                        mean, ci = combine([m for m, _ in vals], [c for _, c in vals])
                        sc["new"][name] = {"mean": mean, "ci95": ci}
                sc["stepwise"] = stepwise
                # the headline: after the step count each seed's validation tasks chose (fewest on a tie)
                chosen = [_chosen_steps(e.get("val"), metric, adapt_steps) if stepwise else None for e in ok]
                sc["selected_steps"] = chosen
                pick = [metric_name(metric, c) if c is not None else metric for c in chosen]
                vals = [(e["new"].get(n), e["new"].get(n + "_ci95")) for e, n in zip(ok, pick)]
                if all(isinstance(m, (int, float)) for m, _ in vals):
                    mean, ci = combine([m for m, _ in vals], [c for _, c in vals])
                    sc["new_final"] = {"mean": mean, "ci95": ci}
                else:
                    sc["new_final"] = None
                seen = [e for e in ok if e.get("seen")]
                if seen and len(seen) == len(ok):
                    src = seen[0]["seen_source"]
                    names_seen = [metric if src == "heads" or metric in e["seen"] else n for e, n in zip(ok, pick)]
                    vals = [(e["seen"].get(n), e["seen"].get(n + "_ci95")) for e, n in zip(ok, names_seen)]
                    mean, ci = combine([m for m, _ in vals], [c for _, c in vals])
                    sc["seen"], sc["seen_source"] = {"mean": mean, "ci95": ci}, src
                else:
                    sc["seen_note"] = next((e.get("seen_note") for e in ok if e.get("seen_note")), "")
            entry["scores"][k] = sc
        for r in runs:
            st = (r["summary"] or {}).get("status", "not run")
            if st != "completed":
                entry["notes"].append(f"seed {r['seed']}: {st} (left out of the means)")
        out.append(entry)
    return out


def _chosen_steps(val: Mapping[str, Any] | None, metric: str, adapt_steps: Sequence[int]) -> int:
    """The adaptation step count with the best validation score (the fewest on a tie); the most
    steps asked where there is no validation score (evaluations written before it existed)."""
    if not val:
        return max(adapt_steps)
    lower = lower_is_better(metric)
    scored = [(val[metric_name(metric, s)], s) for s in adapt_steps if isinstance(val.get(metric_name(metric, s)), (int, float))]
    if not scored:
        return max(adapt_steps)
    return min(scored, key=lambda vs: ((vs[0] if lower else -vs[0]), vs[1]))[1]


def _better(a: float, b: float, lower: bool) -> bool:
    return a < b if lower else a > b


def _best(entries, kind: str, k: int, part: str, lower: bool):
    cands = []
    for e in entries:
        sc = e["scores"].get(k) or {}
        v = sc.get("seen") if part == "seen" else sc.get("new_final")
        if e["kind"] == kind and v is not None and math.isfinite(v["mean"]):
            cands.append((e["algorithm"], v))
    if not cands:
        return None
    return min(cands, key=lambda c: c[1]["mean"] if lower else -c[1]["mean"])


def _fmt_pair(name: str, v: Mapping[str, float]) -> str:
    return f"{name} {v['mean']:.3f} ± {v['ci95']:.3f}"


def paradigm_check(entries: Sequence[Mapping[str, Any]], shots: Sequence[int], metric: str) -> list[dict[str, Any]]:
    """The paradigms' usual account, claim by claim, against this comparison's numbers: multi-task
    learners best on seen tasks; meta-learners best on new tasks at the smallest K; that gap
    narrowing as K grows.  Each claim: holds (and whether the 95% intervals separate), does not
    hold, or cannot be checked here."""
    lower = lower_is_better(metric)
    out = []
    hybrids = [e["algorithm"] for e in entries if e.get("family") == "hybrid"]
    # a hybrid is both paradigms at once: it is in the tables, not on either side of this check
    entries = [e for e in entries if e.get("family") != "hybrid"]
    if hybrids:
        out.append({"claim": "hybrids", "verdict": "left out of the check",
                    "detail": f"{', '.join(hybrids)}: both paradigms at once (multi-task and meta-learning in one "
                              "run); in the tables, on neither side of this check."})
    if not any(e["kind"] == "meta" for e in entries) or not any(e["kind"] == "multitask" for e in entries):
        return out + [{"claim": "paradigms", "verdict": "not checked",
                       "detail": "the comparison needs at least one meta-learner and one multi-task learner."}]

    def verdict(win, lose):
        sep = abs(win[1]["mean"] - lose[1]["mean"]) > (win[1]["ci95"] or 0) + (lose[1]["ci95"] or 0)
        return "holds" + ("" if sep else " (within the 95% intervals)")

    for k in shots:
        mt, me = _best(entries, "multitask", k, "seen", lower), _best(entries, "meta", k, "seen", lower)
        claim = f"seen tasks, K={k}: a multi-task learner is best"
        if mt is None or me is None:
            out.append({"claim": claim, "verdict": "not checked", "detail": "no seen-task score of one of the paradigms."})
            continue
        ok = not _better(me[1]["mean"], mt[1]["mean"], lower)
        out.append({"claim": claim, "verdict": verdict(mt, me) if ok else "does not hold",
                    "detail": f"best multi-task: {_fmt_pair(*mt)}; best meta-learner: {_fmt_pair(*me)}"})
    gaps, gap_ci = {}, {}
    for k in shots:
        me, mt = _best(entries, "meta", k, "new", lower), _best(entries, "multitask", k, "new", lower)
        if me is None or mt is None:
            continue
        gaps[k] = (me[1]["mean"] - mt[1]["mean"]) * (-1 if lower else 1)  # > 0: meta-learning ahead
        gap_ci[k] = math.hypot(me[1]["ci95"] or 0.0, mt[1]["ci95"] or 0.0)
        if k == min(shots):
            ok = gaps[k] >= 0
            out.append({"claim": f"new tasks, K={k} (the fewest shots): a meta-learner is best",
                        "verdict": verdict(me, mt) if ok else "does not hold",
                        "detail": f"best meta-learner: {_fmt_pair(*me)}; best multi-task: {_fmt_pair(*mt)}"})
    if len(gaps) >= 2:
        ks = sorted(gaps)
        seq = ", ".join(f"K={k}: {gaps[k]:+.3f}" for k in ks)
        narrows = gaps[ks[0]] > 0 and gaps[ks[-1]] < gaps[ks[0]]
        monotone = all(gaps[a] >= gaps[b] for a, b in zip(ks, ks[1:]))
        clear = gaps[ks[0]] - gaps[ks[-1]] > math.hypot(gap_ci[ks[0]], gap_ci[ks[-1]])
        verdict = ("holds" if monotone else f"holds from K={ks[0]} to K={ks[-1]}, not at every K") if narrows else "does not hold"
        if narrows and not clear:
            verdict += " (by less than the 95% intervals)"
        out.append({"claim": "new tasks: the meta-learners' lead narrows as K grows", "verdict": verdict,
                    "detail": f"best meta-learner minus best multi-task learner ({'lower' if lower else 'higher'} "
                              f"{metric} is better, sign: + = meta-learning ahead): {seq}"})
    return out


# -- tables ---------------------------------------------------------------------------------------------------
def _cell(v: Mapping[str, float] | None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v["mean"]):
        return "-"
    ci = v.get("ci95")

    def f(x: float) -> str:  # a diverged adaptation (1e13) stays one short cell
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.2e}"

    return f(v["mean"]) + (f" ± {f(ci)}" if isinstance(ci, float) and math.isfinite(ci) else "")


def _num(s: Mapping[str, float] | None, fmt: str = "{:,.1f}", spread: bool = False) -> str:
    if not s:
        return "-"
    text = fmt.format(s["mean"])
    if spread and s["max"] != s["min"]:
        text += f" ({fmt.format(s['min'])}-{fmt.format(s['max'])})"
    return text


def _steps_note(chosen: Sequence[int | None] | None) -> str:
    """`` [5]``: the validation-chosen step count (`` [1,5,5]`` per seed where they differ)."""
    chosen = [c for c in (chosen or []) if c is not None]
    if not chosen:
        return ""
    return f" [{chosen[0]}]" if len(set(chosen)) == 1 else " [" + ",".join(map(str, chosen)) + "]"


def report_tables(entries: Sequence[Mapping[str, Any]], *, metric: str, shots: Sequence[int],
                  adapt_steps: Sequence[int]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, headers, rows) of the score, adaptation and cost tables."""
    t1_head = ["algorithm", "family"] + [h for k in shots for h in (f"seen K={k}", f"new K={k}")]
    t1 = []
    for e in entries:
        row = [e["algorithm"], f"{e['kind']}/{e['family']}"]
        for k in shots:
            sc = e["scores"].get(k, {})
            seen = sc.get("seen")
            row.append(_cell(seen) + (" *" if sc.get("seen_source") == "heads" else "") if seen is not None
                       else ("n/a" if sc.get("n_seeds") else "-"))
            row.append(_cell(sc.get("new_final")) + (_steps_note(sc.get("selected_steps")) if sc.get("stepwise", True) else " †"))
        t1.append(row)
    t2_head = ["algorithm", "K"] + [metric_name(metric, s).removeprefix(metric + "_").replace("_", " ") for s in adapt_steps]
    t2 = []
    for e in entries:
        for k in shots:
            sc = e["scores"].get(k, {})
            if sc.get("stepwise", True):
                t2.append([e["algorithm"], str(k)] + [_cell(sc.get("new", {}).get(metric_name(metric, s))) for s in adapt_steps])
            else:
                t2.append([e["algorithm"], str(k)] + [_cell(sc.get("new_final")) + " †"] * len(adapt_steps))
    t3_head = ["algorithm", "steps reached", "train s", "steps/s", "adapt ms/task", "params", "peak MB"]
    t3 = [[e["algorithm"], _num(e["cost"]["steps"], "{:,.0f}", spread=True), _num(e["cost"]["train_time_s"]),
           _num(e["cost"]["steps_per_s"]), _num(e["cost"]["adapt_time_per_task_ms"], "{:,.2f}"),
           _num(e["cost"]["num_params"], "{:,.0f}"), _num(e["cost"]["peak_memory_mb"], "{:,.0f}")] for e in entries]
    return [
        (f"{metric} on tasks seen in training and on new tasks (mean ± 95% CI over seeds and tasks); a learner that "
         "takes steps is scored after the number of adaptation steps [in brackets] its validation tasks chose among "
         + ", ".join(map(str, adapt_steps)), t1_head, t1),
        (f"new tasks: {metric} against adaptation steps", t2_head, t2),
        ("cost: steps reached (mean, range over seeds), training seconds, adaptation time per new task (all "
         "step counts, at the training K), trainable parameters, peak memory of the run's process", t3_head, t3),
    ]


def _md(headers: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc])


FOOTNOTES = ("* multi-task learner scored with its trained heads (no support set: the same at every K). "
             "n/a: the learner cannot be scored on seen tasks here (see notes). "
             "† the learner adapts without steps (one value).")


def render(entries, *, title: str, metric: str, shots, adapt_steps, notes: Sequence[str], checks, markdown: bool) -> str:
    parts = [f"# {title}\n" if markdown else title + "\n"]
    for caption, headers, rows in report_tables(entries, metric=metric, shots=shots, adapt_steps=adapt_steps):
        parts.append((f"**{caption}**\n\n" + _md(headers, rows)) if markdown else caption + "\n" + table(rows, headers))
    parts.append(FOOTNOTES)
    lines = [f"{c['claim']}: {c['verdict'].upper()}. {c['detail']}" for c in checks]
    if lines:
        parts.append(("**The paradigms' usual account, checked**\n\n" if markdown else "the paradigms' usual account:\n")
                     + "\n".join(("- " if markdown else "  ") + ln for ln in lines))
    every_note = list(notes) + [f"{e['algorithm']}: {n}" for e in entries for n in e["notes"]]
    every_note += [f"{e['algorithm']}: status {e['status']}" for e in entries if e["status"] != "completed"]
    if every_note:
        parts.append(("**Notes**\n\n" if markdown else "notes:\n") + "\n".join(("- " if markdown else "  ") + n for n in every_note))
    return "\n\n".join(parts) + "\n"


def csv_rows(entries, *, metric: str, shots, adapt_steps) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        for k in shots:
            sc = e["scores"].get(k, {})
            row: dict[str, Any] = {"algorithm": e["algorithm"], "kind": e["kind"], "family": e["family"], "shots": k,
                                   "seeds": len(e["seeds"]), "status": e["status"]}
            seen = sc.get("seen")
            row[f"seen_{metric}"] = seen["mean"] if seen else None
            row[f"seen_{metric}_ci95"] = seen["ci95"] if seen else None
            row["seen_source"] = sc.get("seen_source")
            best = sc.get("new_final")
            row[f"new_{metric}"] = best["mean"] if best else None  # at the validation-chosen steps
            row[f"new_{metric}_ci95"] = best["ci95"] if best else None
            row["selected_steps"] = " ".join(str(c) for c in (sc.get("selected_steps") or []) if c is not None)
            for s in adapt_steps:
                name = metric_name(metric, s)
                v = sc.get("new", {}).get(name) if sc.get("stepwise", True) else sc.get("new_final")
                row[f"new_{name}"] = v["mean"] if v else None
                row[f"new_{name}_ci95"] = v["ci95"] if v else None
            for c in ("steps", "train_time_s", "steps_per_s", "adapt_time_per_task_ms", "num_params", "peak_memory_mb"):
                row[c] = e["cost"][c]["mean"] if e["cost"][c] else None
            rows.append(row)
    return rows


def write_report(out: Path, data: Mapping[str, Any], text_md: str) -> list[Path]:
    """report.md, compare.json, compare.csv and the plots in ``out``; returns the paths written.
    Every file is written to a temporary name and renamed."""
    from .plots import plot_all

    out.mkdir(parents=True, exist_ok=True)
    written = []
    write_atomic(out / "report.md", text_md.encode(), what="the report")
    written.append(out / "report.md")
    write_json(out / "compare.json", data, what="the comparison")
    written.append(out / "compare.json")
    rows = data["csv"]
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
        write_atomic(out / "compare.csv", buf.getvalue().encode(), what="the comparison table")
        written.append(out / "compare.csv")
    written += plot_all(out / "plots", data)
    return written
