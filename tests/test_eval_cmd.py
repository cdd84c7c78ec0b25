"""`metareg eval`: a saved run evaluated again from its checkpoint."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from metareg.cli import make_cli


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "maml"
    r = CliRunner().invoke(make_cli(), ["run", "maml", "-b", "sinusoid", "--steps", "30", "--set", "eval_tasks=40",
                                        "--set", "eval_steps=[0,1]", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.output.strip().splitlines()[-1])


def test_eval_reproduces_the_runs_own_numbers(saved_run):
    out, summary = saved_run
    r = CliRunner().invoke(make_cli(), ["eval", str(out), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["checkpoint_step"] == 30
    for k in ("mse_before", "mse_after_1_step", "mse_after_1_step_ci95"):
        assert got[k] == pytest.approx(summary[k], rel=1e-6, abs=1e-9)
    saved = sorted(out.glob("eval-*.json"))
    assert saved and json.loads(saved[-1].read_text())["mse_after_1_step"] == got["mse_after_1_step"]


def test_eval_with_more_steps(saved_run):
    out, summary = saved_run
    r = CliRunner().invoke(make_cli(), ["eval", str(out), "--set", "eval_steps=[1,5]", "--set", "eval_tasks=40",
                                        "--no-save", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["eval_steps"] == [1, 5] and "mse_after_5_steps" in got
    assert got["mse_after_1_step"] == pytest.approx(summary["mse_after_1_step"], rel=1e-6)


@pytest.mark.parametrize("args, words", [
    (["--set", "inner_lr=3"], ["inner_lr", "cannot change"]),
    (["--set", "eval_stepz=[1]"], ["eval_stepz"]),
])
def test_eval_refuses_training_options(saved_run, args, words):
    out, _ = saved_run
    r = CliRunner().invoke(make_cli(), ["eval", str(out), *args])
    assert r.exit_code == 2
    assert all(w in r.output for w in words) and "Traceback" not in r.output


def test_eval_errors_name_the_folder(tmp_path):
    r = CliRunner().invoke(make_cli(), ["eval", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    r = CliRunner().invoke(make_cli(), ["eval", str(tmp_path / "half")])
    assert r.exit_code == 2 and "checkpoint.pt is missing" in r.output
    (tmp_path / "half" / "checkpoint.pt").write_bytes(b"torn")
    r = CliRunner().invoke(make_cli(), ["eval", str(tmp_path / "half")])
    assert r.exit_code == 2 and "not a metareg run configuration" in r.output


def test_eval_torn_checkpoint(saved_run, tmp_path):
    out, _ = saved_run
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "config.json").write_text((out / "config.json").read_text())
    (tmp_path / "torn" / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:100])
    r = CliRunner().invoke(make_cli(), ["eval", str(tmp_path / "torn")])
    assert r.exit_code == 2 and "cannot restore" in r.output and "Traceback" not in r.output


def test_eval_at_other_shots_equals_the_comparisons_scores(saved_run):
    """`eval --shots K` scores the run's own held-out tasks with K support points each: the numbers
    `metareg compare --shots` reports for the same run (metareg.study.evaluate_at_shots)."""
    from metareg.runner import load_run
    from metareg.study import evaluate_at_shots

    out, summary = saved_run
    r = CliRunner().invoke(make_cli(), ["eval", str(out), "--shots", "20", "--no-save", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert (got["shots"], got["train_shots"]) == (20, 10)
    want = evaluate_at_shots(load_run(out), summary, 20)["new"]
    for k in ("mse_before", "mse_after_1_step", "mse_after_1_step_ci95"):
        assert got[k] == want[k]
    assert got["mse_after_1_step"] != summary["mse_after_1_step"]  # 20 support points are not the run's 10
    r = CliRunner().invoke(make_cli(), ["eval", str(out), "--shots", "5", "--tasks", "x.pt"])
    assert r.exit_code == 2 and "contradict" in r.output
