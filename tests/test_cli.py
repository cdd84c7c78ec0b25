"""The command line: listings, runs, and errors that are one line, exit 2, and leave nothing behind."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from metareg.cli import make_cli


def invoke(*args):
    # mix_stderr was removed in click 8.2; stdout and stderr are separate there by default
    runner = CliRunner()
    return runner.invoke(make_cli(), list(args), catch_exceptions=False)


def test_list_table_and_json():
    r = invoke("list")
    assert r.exit_code == 0
    for name in ("maml", "fomaml", "reptile", "meta_sgd", "anil", "hard_sharing", "sinusoid", "sinusoid_mtl", "mlp"):
        assert name in r.stdout
    data = json.loads(invoke("list", "--json").stdout)
    maml = next(a for a in data["algorithms"] if a["name"] == "maml")
    assert maml["kind"] == "meta" and maml["family"] == "optimization" and maml["plugin"] == "maml"
    assert maml["package"] == "metareg" and "Finn" in maml["paper"] and maml["summary"]


def test_list_filters():
    data = json.loads(invoke("list", "--kind", "multitask", "--json").stdout)
    assert {a["kind"] for a in data["algorithms"]} == {"multitask"}
    assert "hard_sharing" in {a["name"] for a in data["algorithms"]}
    data = json.loads(invoke("list", "*sgd*", "--json").stdout)
    assert [a["name"] for a in data["algorithms"]] == ["meta_sgd"]


def test_info_shows_hyperparameters_and_benchmarks():
    r = invoke("info", "maml")
    assert r.exit_code == 0
    assert "inner_lr" in r.stdout and "0.01" in r.stdout and "inner-loop (adaptation) learning rate" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("compatible benchmarks:"))
    assert {"sinusoid", "sinusoid_mtl"} <= set(line.split(":", 1)[1].replace(",", " ").split())
    data = json.loads(invoke("info", "hard_sharing", "--json").stdout)
    assert "sinusoid_mtl" in data["compatible"] and "sinusoid" not in data["compatible"]
    assert {h["name"] for h in data["hyperparameters"]} >= {"combiner", "head_fit"}
    r = invoke("info", "sinusoid")
    assert "shots" in r.stdout and "maml" in r.stdout


def test_plugins_command():
    data = json.loads(invoke("plugins", "--json").stdout)
    names = {p["name"]: p for p in data["plugins"]}
    assert names["maml"]["package"] == "metareg" and "register_algorithms" in names["maml"]["hooks"]
    assert data["errors"] == []


def test_run_json_summary(tmp_path):
    out = tmp_path / "run"
    r = invoke("run", "maml", "--benchmark", "sinusoid", "--steps", "20", "--set", "eval_tasks=30",
               "--set", "val_every=10", "--out", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    for key in ("mse_before", "mse_after_1_step", "mse_after_10_steps", "mse_after_1_step_ci95"):
        assert isinstance(s[key], float)
    assert s["status"] == "completed" and s["steps"] == 20 and s["eval_tasks"] == 30
    # drawing the meta-batches is timed apart from the step it feeds, and is part of train_time
    assert 0 < s["sample_time_s"] < s["train_time_s"]
    assert s["sample_share"] == pytest.approx(s["sample_time_s"] / s["train_time_s"], abs=0.02)  # both rounded
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .lock: the folder lock
    assert {"checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"} <= set(visible)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algorithm_config"]["inner_lr"] == 0.01 and cfg["run_config"]["steps"] == 20
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(rec["split"] == "val" and "mse_after_1_step" in rec for rec in lines)
    assert json.loads((out / "summary.json").read_text())["mse_after_1_step"] == s["mse_after_1_step"]
    import torch

    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 20 and "theta" in ck["learner"]


def test_run_human_output_and_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("steps = 5\n[benchmark]\nshots = 5\n[run]\neval_tasks = 10\n")
    r = invoke("run", "hard_sharing", "-b", "sinusoid_mtl", "--config", str(cfg), "--no-save")
    assert r.exit_code == 0, r.stderr
    assert "hard_sharing on sinusoid_mtl: completed after 5 steps" in r.stdout
    assert "% of it drawing tasks)" in r.stdout
    assert "mse_after_1_step" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "mamll", "-b", "sinusoid"], "unknown algorithm 'mamll'. Did you mean 'maml'?"),
    (["run", "maml", "-b", "sinusiod"], "unknown benchmark 'sinusiod'. Did you mean 'sinusoid'?"),
    (["run", "maml"], "which benchmark?"),
    (["run", "maml", "-b", "sinusoid", "--set", "inner_lrr=0.1"], "Did you mean 'inner_lr'?"),
    (["run", "maml", "-b", "sinusoid", "--set", "inner_lr=fast"], "inner_lr must be a number"),
    (["run", "maml", "-b", "sinusoid", "--set", "inner_lr=-1"], "inner_lr must be greater than 0"),
    (["run", "maml", "-b", "sinusoid", "--set", "shots=0"], "shots must be at least 1"),
    (["run", "maml", "-b", "sinusoid", "--set", "inner_steps=0"], "inner_steps must be at least 1"),
    (["run", "maml", "-b", "sinusoid", "--steps", "0"], "steps must be at least 1"),
    (["run", "maml", "-b", "sinusoid", "--steps", "-5"], "steps must be at least 1"),
    (["run", "maml", "-b", "sinusoid", "--set", "novalue"], "--set expects key=value"),
    (["run", "maml", "-b", "sinusoid", "--set", "meta_batch=2", "--set", "eval_steps=[-1]"], "eval_steps must be non-negative"),
    (["run", "hard_sharing", "-b", "sinusoid"], "needs a benchmark providing fixed_tasks"),
    (["run", "equal", "-b", "sinusoid_mtl"], "is a combiner, not a learner"),
    (["run", "hard_sharing", "-b", "sinusoid_mtl", "--set", "combiner=pcgrd"], "pcgrd"),
    (["run", "maml", "-b", "sinusoid", "--device", "cuda:7"], "device"),
    (["info", "mamml"], "Did you mean 'maml'?"),
])
def test_user_errors_are_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "out"
    r = invoke(*args, "--out", str(out)) if args[0] == "run" else invoke(*args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert needle in err and err.startswith("Error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_config_file_errors(tmp_path):
    missing = tmp_path / "missing.toml"
    r = invoke("run", "maml", "-b", "sinusoid", "--config", str(missing), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "does not exist" in r.stderr and not (tmp_path / "o").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    r = invoke("run", "maml", "-b", "sinusoid", "--config", str(bad))
    assert r.exit_code == 2 and "not valid TOML" in r.stderr
    unreadable = tmp_path / "secret.toml"
    unreadable.write_text("steps = 1")
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        r = invoke("run", "maml", "-b", "sinusoid", "--config", str(unreadable))
        assert r.exit_code == 2 and "not readable" in r.stderr


def test_out_must_be_new_or_empty_and_writable(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "summary.json").write_text("{}")
    r = invoke("run", "maml", "-b", "sinusoid", "--steps", "1", "--out", str(used))
    assert r.exit_code == 2 and "already contains files" in r.stderr
    assert sorted(p.name for p in used.iterdir()) == ["summary.json"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = invoke("run", "maml", "-b", "sinusoid", "--steps", "1", "--out", str(afile / "sub"))
    assert r.exit_code == 2 and ("not writable" in r.stderr or "not a directory" in r.stderr)


def test_unwritable_out_as_non_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = invoke("run", "maml", "-b", "sinusoid", "--steps", "1", "--out", str(ro / "run"))
    assert r.exit_code == 2 and "not writable" in r.stderr


def test_console_script_error_has_no_traceback():
    exe = os.path.join(os.path.dirname(sys.executable), "metareg")
    p = subprocess.run([exe, "run", "maml", "-b", "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("Error: unknown benchmark 'nope'") and "Traceback" not in p.stderr


def test_interrupted_run_is_saved(tmp_path):
    """SIGTERM mid-run: checkpoint and a summary saying 'interrupted', every file complete."""
    out = tmp_path / "run"
    code = (
        "import os, signal, metareg\n"
        "from metareg.runner import Run\n"
        "class Killer:\n"
        "    @metareg.hookimpl\n"
        "    def on_step_end(self, run, step, metrics):\n"
        "        if step == 7: os.kill(os.getpid(), signal.SIGTERM)\n"
        "from metareg.plugins import get_manager\n"
        "m = get_manager(); m.add(Killer(), name='killer')\n"
        f"s = Run('maml', 'sinusoid', {{'steps': 1000}}, out={str(out)!r}).execute(progress=False)\n"
        "print(s['status'], s['steps'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["interrupted", "7"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "mse_after_1_step" not in summary
    assert not list(out.glob("*.tmp"))
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 7
