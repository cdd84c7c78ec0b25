"""Runs that survive being killed, full disks, planted symlinks and NaNs.

The kill/resume tests run a short MAML job in a child process that kills itself (SIGKILL, SIGINT
or SIGTERM) at a chosen step or during the final evaluation, resume it, and compare the result
with an uninterrupted run: the same parameters bit for bit, the same metrics.jsonl and summary
except for wall-clock fields (``time_s``, ``train_time_s`` ...), which no two runs share.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from metareg import io as mio
from metareg.errors import IncompatibleError, OutputError
from metareg.runner import Run

ARGS = ["maml", "-b", "sinusoid", "--steps", "40", "--set", "checkpoint_every=6", "--set", "checkpoint_every_s=0",
        "--set", "log_every=3", "--set", "val_every=15", "--set", "val_tasks=10", "--set", "eval_tasks=30"]
WALL_CLOCK = {"time_s", "train_time_s", "steps_per_s", "sample_time_s", "sample_share", "eval_time_s",
              "adapt_time_per_task_ms", "peak_memory_mb", "finished_at", "out", "threads", "step_workers"}

# a child that runs `metareg run ...` and signals itself at step KILL_AT (or, with "eval", when
# the final evaluation starts)
CHILD = textwrap.dedent("""
    import os, signal, sys, types
    import metareg
    from metareg import cli, plugins, runner

    sig = getattr(signal, os.environ["KILL_SIG"])
    at = os.environ["KILL_AT"]

    @metareg.hookimpl
    def on_step_end(run, step, metrics):
        if at != "eval" and step == int(at):
            os.kill(os.getpid(), sig)

    if at == "eval":
        real = runner.Run.evaluate
        def evaluate(self, num_tasks, split="test"):
            if split == "test":
                os.kill(os.getpid(), sig)
            return real(self, num_tasks, split)
        runner.Run.evaluate = evaluate

    m = plugins.PluginManager()
    m.load_entry_points()
    m.add(types.SimpleNamespace(on_step_end=on_step_end), name="killer", package="killer")
    plugins.reset(m)
    cli.main(sys.argv[1:])
""")


def _metareg(*args, env=None):
    return subprocess.run([sys.executable, "-m", "metareg", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _child(out, sig, at):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_SIG": sig, "KILL_AT": str(at)}
    return subprocess.run([sys.executable, "-c", CHILD, "run", *ARGS, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, env=env)


def _strip(record):
    return {k: v for k, v in record.items() if k not in WALL_CLOCK}


def _same_as_reference(ref: Path, out: Path) -> None:
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert _strip(a) == _strip(b)
    la = [_strip(json.loads(line)) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    lb = [_strip(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert la == lb
    pa = torch.load(ref / "checkpoint.pt", weights_only=True)["learner"]
    pb = torch.load(out / "checkpoint.pt", weights_only=True)["learner"]
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    p = _metareg("run", *ARGS, "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    return out


# two kill points in the default suite; the rest (make test-slow) also cover the first and last checkpoints
KILL_POINTS = [23, "eval", *(pytest.param(k, marks=pytest.mark.slow) for k in (7, 36, random.Random(2026).randint(7, 39)))]


@pytest.mark.parametrize("at", KILL_POINTS)
def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, tmp_path, at):
    out = tmp_path / "run"
    p = _child(out, "SIGKILL", at)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not (out / "summary.json").exists()
    r = _metareg("run", "--resume", str(out), "--json")
    assert r.returncode == 0, r.stderr
    _same_as_reference(reference, out)


@pytest.mark.parametrize("sig,code", [pytest.param("SIGINT", 130, marks=pytest.mark.slow), ("SIGTERM", 143)])
def test_signals_save_exit_with_their_code_and_resume(reference, tmp_path, sig, code):
    out = tmp_path / "run"
    p = _child(out, sig, 20)
    assert p.returncode == code, p.stderr
    assert f"metareg run --resume {out}" in p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["interrupted_by"] == sig and s["steps"] == 20
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20  # saved at the boundary
    r = _metareg("run", "--resume", str(out), "--json")
    assert r.returncode == 0, r.stderr
    _same_as_reference(reference, out)
    again = _metareg("run", "--resume", str(out), "--json")  # a finished run: nothing to do
    assert again.returncode == 0 and json.loads(again.stdout)["resumed"] == "already complete"


def test_signal_during_evaluation_keeps_the_trained_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    p = _child(out, "SIGTERM", "eval")
    assert p.returncode == 143, p.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["loop"]["trained"] is True
    assert _metareg("run", "--resume", str(out)).returncode == 0
    _same_as_reference(reference, out)


def test_resume_refuses_another_configuration_naming_the_difference(reference, tmp_path):
    out = tmp_path / "run"
    _child(out, "SIGKILL", 8)
    cfg = json.loads((out / "config.json").read_text())
    cfg["algorithm_config"]["inner_lr"] = 0.5
    (out / "config.json").write_text(json.dumps(cfg))
    r = _metareg("run", "--resume", str(out))
    assert r.returncode == 2 and "algorithm.inner_lr=0.01" in r.stderr and "0.5" in r.stderr
    cfg["algorithm_config"]["inner_lr"] = 0.01
    cfg["metareg_version"] = "9.9.0"
    (out / "config.json").write_text(json.dumps(cfg))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["config"]["benchmark"] = "glyphs"
    torch.save(state, out / "checkpoint.pt")
    r = _metareg("run", "--resume", str(out))
    assert r.returncode == 2 and "benchmark 'glyphs'" in r.stderr
    r = _metareg("run", "maml", "--resume", str(out))
    assert r.returncode == 2 and "drop NAME" in r.stderr


def test_one_run_per_folder(tmp_path):
    out = tmp_path / "run"
    _child(out, "SIGKILL", 8)
    lock = mio.FolderLock(out)
    try:
        with pytest.raises(OutputError, match=f"in use by another metareg process \\(pid {os.getpid()}\\)"):
            Run.from_folder(out).execute(progress=False, resume=True)
    finally:
        lock.release()


def test_default_folders_never_collide(tmp_path):
    a = _metareg("run", "maml", "-b", "sinusoid", "--steps", "1", "--set", "eval_tasks=2", "--set", "val_every=0",
                 "--json", env={"PWD": str(tmp_path)})
    assert a.returncode == 0, a.stderr
    first = json.loads(a.stdout)["out"]
    b = _metareg("run", "maml", "-b", "sinusoid", "--steps", "1", "--set", "eval_tasks=2", "--set", "val_every=0", "--json")
    assert json.loads(b.stdout)["out"] != first
    for folder in (first, json.loads(b.stdout)["out"]):
        assert Path(folder).name.startswith("maml-sinusoid-")
        import shutil

        shutil.rmtree(folder)


# -- full disk --------------------------------------------------------------------------------
@pytest.mark.parametrize("fail_at", [2, 5, 9])
def test_a_full_disk_stops_the_run_and_keeps_every_complete_file(tmp_path, monkeypatch, fail_at):
    """ENOSPC injected at the fail_at-th write after the first checkpoint: one error naming the
    path, the last good checkpoint intact, metrics.jsonl ending in a whole line."""
    out = tmp_path / "run"
    real = mio._write_all
    state = {"armed": False, "writes": 0}

    def write_all(fd, data):
        if state["armed"]:
            state["writes"] += 1
            if state["writes"] >= fail_at:
                os.write(fd, bytes(data)[: len(data) // 2])  # half a line reaches the disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(mio, "_write_all", write_all)
    real_ckpt = Run._checkpoint

    def checkpoint(self, *a, **k):
        real_ckpt(self, *a, **k)
        state["armed"] = True  # the disk fills up after the first good checkpoint

    monkeypatch.setattr(Run, "_checkpoint", checkpoint)
    over = {"steps": 40, "checkpoint_every": 6, "checkpoint_every_s": 0, "log_every": 1, "val_every": 0, "eval_tasks": 10}
    with pytest.raises(OutputError) as e:
        Run("maml", "sinusoid", over, out=out).execute(progress=False)
    msg = str(e.value)
    assert "the disk is full" in msg and str(out) in msg and "last good checkpoint" in msg
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    assert good["step"] >= 6 and f"(step {good['step']})" in msg
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written temporaries


# -- symlinks ----------------------------------------------------------------------------------
def test_writes_never_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    _child(out, "SIGKILL", 8)
    for name in ("summary.json", "checkpoint.pt.tmp", "config.json.tmp"):
        link = out / name
        if link.exists():
            link.unlink()
        link.symlink_to(victim)
    r = _metareg("run", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious" and not (out / "summary.json").is_symlink()
    # metrics.jsonl planted as a link: refused, not followed
    out2 = tmp_path / "run2"
    _child(out2, "SIGKILL", 8)
    (out2 / "metrics.jsonl").unlink()
    (out2 / "metrics.jsonl").symlink_to(victim)
    r = _metareg("run", "--resume", str(out2))
    assert r.returncode == 2 and "symbolic link" in r.stderr and victim.read_text() == "precious"


def test_eval_output_never_follows_a_symlink(tmp_path, monkeypatch):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    target = tmp_path / "eval-x.json"
    target.symlink_to(victim)
    mio.write_json(target, {"a": 1})
    assert victim.read_text() == "precious" and json.loads(target.read_text()) == {"a": 1}


# -- numerical faults ---------------------------------------------------------------------------
def test_nan_stops_the_run_naming_step_quantity_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    # SGD with lr 1e30: finite weights of ~1e30 after step 1, then an infinite loss at step 2
    p = _metareg("run", "maml", "-b", "sinusoid", "--steps", "30", "--set", "optimizer=sgd", "--set", "lr=1e30",
                 "--set", "checkpoint_every=1",
                 "--set", "val_every=0", "--set", "eval_tasks=5", "--out", str(out))
    assert p.returncode == 1, p.stderr
    assert "diverged:" in p.stderr and "at step 2" in p.stderr and "(step 1)" in p.stderr
    s = json.loads((out / "summary.json").read_text())  # strict JSON: json.loads would accept NaN, so check the text
    assert "NaN" not in (out / "summary.json").read_text() and "Infinity" not in (out / "summary.json").read_text()
    assert s["status"] == "diverged"
    for line in (out / "metrics.jsonl").read_text().splitlines():
        assert "NaN" not in line
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["learner"].values() if v.is_floating_point())


def test_nonfinite_steps_can_be_skipped(tmp_path):
    s = Run("maml", "sinusoid", {"steps": 6, "inner_lr": 1e30, "on_nonfinite": "skip", "val_every": 0,
                                 "eval_tasks": 5}).execute(progress=False)
    assert s["status"] == "completed" and s["nonfinite_skipped_steps"] == 6


def test_strict_json_turns_nonfinite_numbers_into_flagged_nulls():
    text = mio.dumps_strict({"a": float("nan"), "b": [1.0, float("inf")], "c": 2})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2, "nonfinite": ["a", "b[1]"]}


def test_a_crafted_checkpoint_is_a_clean_error(tmp_path):
    out = tmp_path / "run"
    _child(out, "SIGKILL", 8)
    (out / "checkpoint.pt").write_bytes(b"\x80\x02crafted")
    r = _metareg("run", "--resume", str(out))
    assert r.returncode == 2 and "cannot restore" in r.stderr and "Traceback" not in r.stderr
    state = {"learner": {"theta": torch.zeros(3)}, "step": -4}
    torch.save(state, out / "checkpoint.pt")
    r = _metareg("eval", str(out))
    assert r.returncode == 2 and "not a step count" in r.stderr
    with pytest.raises(IncompatibleError):
        from metareg.checkpoint import check_compatible

        check_compatible({"config": {"algorithm": "x"}}, {"algorithm": "y"}, out / "checkpoint.pt", "0.1.0")
