"""The comparison protocol (metareg compare / metareg.study): every number equals a separate
`metareg run` of the same algorithm, seed and budget (sinusoid and glyphs); a killed comparison
finishes on the second try without rerunning what was done; suites; tracking."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from metareg import plugins
from metareg.cli import make_cli
from metareg.compare import combine, paradigm_check
from metareg.evaluate import metric_name
from metareg.runner import Run, load_run
from metareg.study import evaluate_at_shots, parse_budget

COMMON = ["--set", "eval_steps=[0,1,5]", "--set", "val_every=0"]


def _invoke(args):
    r = CliRunner().invoke(make_cli(), args, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr + r.stdout
    return r


def _separate_run(tmp_path, algo, bench, seed, steps, sets):
    out = tmp_path / f"sep-{algo}-{seed}"
    args = ["run", algo, "-b", bench, "--steps", str(steps), "--seed", str(seed), *COMMON, "--out", str(out), "--json"]
    for s in sets:
        args += ["--set", s]
    summary = json.loads(_invoke(args).stdout)
    return out, summary


def _check_equal(entry, seed, folder, summary, shots, train_shots):
    """Every number of one (algorithm, seed) in compare.json equals the separate run's: its
    summary at the training K, the separate run's checkpoint evaluated at the other K."""
    metric = summary["metric"]
    mine = next(p for p in entry["per_seed"] if p["seed"] == seed)
    for k in ("steps", "num_params"):
        assert mine["summary"][k] == summary[k]
    base = load_run(folder)
    for k in shots:
        ev = mine["evals"][str(k)]
        want = evaluate_at_shots(base, summary, k)
        if k == train_shots:
            want_new = {n: v for n, v in summary.items() if n.startswith(metric)}
            assert {n: want["new"][n] for n in want_new} == want_new  # the same evaluation path as the run's
        else:
            want_new = {n: v for n, v in want["new"].items() if n.startswith(metric)}
        assert want_new and {n: ev["new"][n] for n in want_new} == want_new
        assert ev["seen_source"] == want["seen_source"] and ev["seen"] == want["seen"]
        if want["seen_source"] == "heads":
            assert ev["seen"][metric] == summary[f"train_tasks_{metric}"]
        assert ev["val"] == want["val"]
        if len(entry["per_seed"]) == 1:  # one seed: the table's numbers are that seed's, at the chosen steps
            sc = entry["scores"][str(k)]
            (chosen,) = sc["selected_steps"]
            name = metric if chosen is None else metric_name(metric, chosen)
            if chosen is not None:  # the step count with the best validation score
                lower = metric == "mse"
                vals = {s: ev["val"][metric_name(metric, s)] for s in (0, 1, 5)}
                assert vals[chosen] == (min if lower else max)(vals.values())
            assert (sc["new_final"]["mean"], sc["new_final"]["ci95"]) == (ev["new"][name], ev["new"][name + "_ci95"])


def test_sinusoid_comparison_equals_separate_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers and the runs here: one thread each
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "cmp"
        sets = ["eval_tasks=12", "hard_sharing.combiner=pcgrad"]
        args = ["compare", "maml", "hard_sharing", "-b", "sinusoid_mtl", "--seeds", "2", "--shots", "5,10",
                "--budget", "steps=15", "--jobs", "2", "--out", str(out), "--set", "run.track=csv", "--json"]
        for s in sets:
            args += ["--set", s]
        data = json.loads(_invoke(args).stdout)
        entries = {e["algorithm"]: e for e in data["entries"]}
        assert data["train_shots"] == 10 and data["shots"] == [5, 10] and data["adapt_steps"] == [0, 1, 5]
        for algo in ("maml", "hard_sharing"):
            for seed in (0, 1):
                run_sets = ["eval_tasks=12"] + (["combiner=pcgrad"] if algo == "hard_sharing" else [])
                folder, summary = _separate_run(tmp_path, algo, "sinusoid_mtl", seed, 15, run_sets)
                _check_equal(entries[algo], seed, folder, summary, [5, 10], 10)
        # one tracked run per (algorithm, seed), inside the comparison's folder
        tracked = sorted(p.parent.name for p in (out / "runs").glob("*/track.csv"))
        assert len(tracked) == 4 and all("train/loss" in (out / "runs" / t / "track.csv").read_text() for t in tracked)
        assert entries["maml"]["scores"]["5"]["seen_source"] == "adapted"
        assert entries["hard_sharing"]["scores"]["5"]["seen_source"] == "heads"
        for f in ("report.md", "compare.csv", "compare.json", "plots/shots.png", "plots/adaptation.png", "plots/cost.png"):
            assert (out / f).stat().st_size > 500, f
    finally:
        torch.set_num_threads(torch_threads)


GLYPHS = ["benchmark.max_per_group=3", "num_tasks=3", "meta_batch=2", "query=2", "eval_tasks=4"]


def test_glyphs_comparison_equals_separate_runs(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "protonet", "hard_sharing", "-b", "glyphs_mtl", "--shots", "1,2", "--budget", "steps=2",
            "--jobs", "0", "--out", str(out), "--json", "--set", "hard_sharing.combiner=pcgrad"]
    for s in GLYPHS:
        args += ["--set", s]
    data = json.loads(_invoke(args).stdout)
    entries = {e["algorithm"]: e for e in data["entries"]}
    for algo in ("protonet", "hard_sharing"):
        sets = GLYPHS + (["combiner=pcgrad"] if algo == "hard_sharing" else [])
        folder, summary = _separate_run(tmp_path, algo, "glyphs_mtl", 0, 2, sets)
        _check_equal(entries[algo], 0, folder, summary, [1, 2], 1)


def test_evaluating_at_the_training_shots_reproduces_the_run(tmp_path):
    """evaluate_at_shots at the run's own K gives the summary's numbers (the other K use the same path)."""
    over = {"steps": 10, "eval_tasks": 10, "val_every": 0, "eval_steps": [0, 2]}
    summary = Run("maml", "sinusoid_mtl", over, out=tmp_path / "r").execute(progress=False)
    res = evaluate_at_shots(load_run(tmp_path / "r"), summary, 10)
    assert {k: summary[k] for k in res["new"]} == res["new"]
    assert res["seen_source"] == "adapted" and set(res["seen"]) >= {"mse_before", "mse_after_2_steps"}


@pytest.mark.slow  # ~40 s; the default suite's interrupted-comparison test covers the resume path
def test_killed_comparison_resumes_without_rerunning(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "metareg", "compare", "maml", "fast_weights", "-b", "sinusoid_mtl", "--budget",
           "steps=400", "--set", "eval_tasks=10", "--jobs", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 300
        first = second = None
        while time.time() < deadline and proc.poll() is None:
            runs = sorted((out / "runs").glob("*")) if (out / "runs").exists() else []
            first = next((r for r in runs if r.name.startswith("maml") and (r / "summary.json").exists()), None)
            second = next((r for r in runs if r.name.startswith("fast_weights")), None)
            if first and second and (second / "metrics.jsonl").exists() and (second / "metrics.jsonl").stat().st_size:
                break
            time.sleep(0.05)
        assert proc.poll() is None and first and second, "the comparison ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the comparison and its running worker, mid-training
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (second / "summary.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    again = cmd[3:] + ["--json"]  # the same command, in this process this time (its workers are processes)
    data = json.loads(_invoke(again).stdout)
    assert data["reused_runs"] == 1
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == done  # not rerun, not rewritten
    assert json.loads((second / "summary.json").read_text())["steps"] == 400
    assert [e["status"] for e in data["entries"]] == ["completed", "completed"]
    # adding an algorithm reruns nothing else
    assert json.loads(_invoke(again[:3] + ["hard_sharing"] + again[3:]).stdout)["reused_runs"] == 2


def _workers(out):
    """Live worker processes of the comparison writing to ``out`` (their command line names it)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "metareg.study" in cmd and str(out) in cmd:
                try:
                    if open(f"/proc/{d}/stat").read().split(") ", 1)[1][0] != "Z":
                        pids.append(int(d))
                except OSError:
                    pass
    return pids


@pytest.mark.slow  # 25 s: the default suite keeps the single run's signal tests (test_durability.py)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_interrupted_comparison_stops_as_a_whole_and_resumes(tmp_path):
    """SIGINT to the comparison alone (not its process group) while two runs train and a third
    waits: it stops every worker, each saving its run as interrupted, starts nothing more, exits
    130; the same command then finishes all three."""
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "metareg", "compare", "maml", "fast_weights", "hard_sharing", "-b", "sinusoid_mtl",
           "--budget", "steps=600", "--set", "eval_tasks=10", "--jobs", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, running = time.time() + 300, []
        while time.time() < deadline and proc.poll() is None:
            runs = sorted((out / "runs").glob("*")) if (out / "runs").exists() else []
            running = [r for r in runs if (r / "metrics.jsonl").exists() and (r / "metrics.jsonl").stat().st_size]
            if len(running) == 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(running) == 2, "the comparison ended before it could be interrupted"
        assert len(_workers(out)) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err.decode()[-500:]
    assert "interrupted; finished runs are kept" in err.decode()
    assert _workers(out) == []  # no worker left behind
    assert sorted(r.name.split("-")[0] for r in (out / "runs").iterdir()) == ["fast_weights", "maml"]  # none started
    for r in running:  # each stopped at a step boundary with a checkpoint and an interrupted summary
        assert (r / "checkpoint.pt").exists()
        summary = json.loads((r / "summary.json").read_text())
        assert summary["status"] == "interrupted" and 0 < summary["steps"] < 600
    data = json.loads(_invoke(cmd[3:] + ["--json"]).stdout)
    assert [e["status"] for e in data["entries"]] == ["completed"] * 3
    for r in running:
        assert json.loads((r / "summary.json").read_text())["steps"] == 600


def test_paradigms_suite_resolves_per_benchmark_and_lists():
    from metareg.suites import get_suite, resolve_suite

    s = get_suite("paradigms")
    sin = resolve_suite(s, "sinusoid")
    assert sin.benchmark == "sinusoid_mtl" and "maml" in sin.algorithms and "hard_sharing" in sin.algorithms
    assert "protonet" not in sin.algorithms and any("metric" in n for n in sin.notes)  # classification only
    gl = resolve_suite(s, "glyphs")
    assert gl.benchmark == "glyphs_mtl" and {"maml", "protonet", "hard_sharing"} <= set(gl.algorithms)
    assert gl.sets["hard_sharing.combiner"] == "pcgrad"
    r = _invoke(["list", "--suites"])
    assert "paradigms" in r.stdout and "-b sinusoid -> sinusoid_mtl" in r.stdout
    listed = json.loads(_invoke(["list", "--suites", "--json"]).stdout)
    assert listed["suites"][0]["on"]["glyphs"]["benchmark"] == "glyphs_mtl"


class _SuitePlugin:
    import metareg as _m

    @_m.hookimpl
    def register_suites(self, register):
        register("paradigms", "a clash with the built-in", {"one": ["maml"]})
        register("tiny", "two learners", {"a": ["maml"], "b": ["not_installed", "fomaml"]})


def test_plugins_register_suites_and_clashes_are_qualified(caplog):
    from metareg.suites import resolve_suite, suites

    m = plugins.get_manager()
    m.add(_SuitePlugin(), name="suite-test", package="suite-pkg")
    every = suites(m)
    assert every["paradigms"].package == "metareg" and "suite-pkg:paradigms" in every
    assert "already registered" in caplog.text
    tiny = resolve_suite(every["tiny"], "sinusoid", m)
    assert tiny.algorithms == ("maml", "fomaml") and any("not_installed (not installed)" in n for n in tiny.notes)


def test_budget_and_ci_rules():
    assert parse_budget("seconds=2.5").layer(False) == {"run.time_budget_s": 2.5, "run.steps": 1_000_000}
    assert parse_budget("steps=7").layer(True) == {"run.steps": 7, "run.time_budget_s": 0.0}
    for bad in ("minutes=3", "steps=0", "steps=1.5", "seconds"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    assert combine([0.5], [0.1]) == (0.5, 0.1)
    mean, ci = combine([0.4, 0.6, 0.5], [0.01, 0.01, 0.01])  # seeds disagree more than tasks: t(2) = 4.303
    assert mean == pytest.approx(0.5) and ci == pytest.approx(4.303 * 0.1 / 3 ** 0.5)
    mean, ci = combine([0.5, 0.5], [0.2, 0.2])  # seeds agree: never narrower than the tasks' interval
    assert ci == pytest.approx(1.96 * (0.2 / 1.96) / 2 ** 0.5)


def test_paradigm_check_says_where_the_account_fails():
    def entry(name, kind, seen, new):
        return {"algorithm": name, "kind": kind,
                "scores": {k: {"seen": None if seen is None else {"mean": seen, "ci95": 0.01},
                               "new_final": {"mean": new[k], "ci95": 0.01}} for k in new}}

    entries = [entry("m", "meta", 0.7, {1: 0.6, 5: 0.8}), entry("t", "multitask", 0.9, {1: 0.4, 5: 0.75}),
               {**entry("h", "meta", 0.99, {1: 0.99, 5: 0.99}), "family": "hybrid"}]  # both paradigms: left out
    checks = {c["claim"]: c["verdict"] for c in paradigm_check(entries, [1, 5], "accuracy")}
    assert checks["hybrids"] == "left out of the check"
    assert checks["seen tasks, K=1: a multi-task learner is best"] == "holds"
    assert checks["new tasks, K=1 (the fewest shots): a meta-learner is best"] == "holds"
    assert checks["new tasks: the meta-learners' lead narrows as K grows"] == "holds"  # +0.2 -> +0.05
    entries[1]["scores"][1]["new_final"]["mean"] = 0.65  # mse-like reading flips it
    checks = {c["claim"]: c["verdict"] for c in paradigm_check(entries, [1, 5], "mse")}
    assert checks["seen tasks, K=1: a multi-task learner is best"] == "does not hold"


def test_tensorboard_and_csv_tracking(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("METAREG_TRACK", "tensorboard,csv")
    over = {"steps": 20, "eval_tasks": 5, "val_every": 10, "val_tasks": 5, "log_every": 5, "eval_steps": [0, 1]}
    summary = Run("maml", "sinusoid", over, out=tmp_path / "r").execute(progress=False)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]
    assert "val/mse_after_1_step" in tags and [e.step for e in acc.Scalars("val/mse_after_1_step")] == [10]
    assert acc.Scalars("summary/mse_after_1_step")[0].value == pytest.approx(summary["mse_after_1_step"])
    rows = (tmp_path / "r" / "track.csv").read_text().splitlines()
    assert rows[0] == "step,name,value" and any(r.startswith("20,train/loss,") for r in rows)


def test_unknown_tracker_is_said(tmp_path, caplog):
    Run("maml", "sinusoid", {"steps": 2, "eval_tasks": 2, "track": "csv,wandb"}, out=tmp_path / "r").execute(progress=False)
    assert "'wandb' is not a built-in tracker" in caplog.text
    assert (tmp_path / "r" / "track.csv").is_file()  # the run option, not only $METAREG_TRACK
