"""Bad input gets one clean line, exit status 2, no traceback and no folder (the whole table of
benchmarks/bad_inputs.py runs in `make test-slow`; a sample runs here, in process)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from metareg.cli import make_cli

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "maml", "-b", "sinusoid", "--steps", "1", "--set", "eval_tasks=2", "--set", "val_every=0"]


@pytest.mark.parametrize("argv,needle", [
    ([*RUN, "--seed", "-1"], "seed must be at least 0"),
    ([*RUN, "--seed", str(2**64)], "seed must be at most"),
    ([*RUN[:4], "--steps", str(10**12)], "steps must be at most"),
    ([*RUN, "--set", "inner_steps=1000000"], "inner_steps must be at most 10000"),
    (["run", "protonet", "-b", "glyphs", "--set", "meta_batch=1000000000", "--steps", "1"], "GiB of inputs alone"),
    ([*RUN, "--set", "x_min=1", "--set", "x_max=1"], "x_min (1.0) must be below x_max (1.0)"),
    ([*RUN, "--set", "adapt_encoder=true head_fit=sgd"], "one key=value per --set"),
    ([*RUN, "--out", ""], "--out is empty"),
    ([*RUN, "--set", "backbone=conv4"], "conv4 takes images"),
])
def test_bad_input_is_one_line_exit_2_and_no_folder(tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(make_cli(), argv)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty runs/ folder


def test_flat_and_sectioned_toml_must_agree(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("shots = 5\n[benchmark]\nshots = 3\n")
    r = CliRunner().invoke(make_cli(), [*RUN, "--config", str(f), "--no-save"])
    assert r.exit_code == 2 and "set twice with different values" in r.stderr


def test_crafted_config_json_is_a_clean_error(tmp_path):
    for name, cfg in (("types", {"algorithm": ["maml"], "benchmark": 3}),
                      ("huge", {"algorithm": "maml", "benchmark": "sinusoid", "run_config": {"eval_tasks": 10**12}}),
                      ("sections", {"algorithm": "maml", "benchmark": "sinusoid", "run_config": [1]})):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "checkpoint.pt").write_bytes(b"junk")
        r = CliRunner().invoke(make_cli(), ["eval", str(d)])
        assert r.exit_code == 2 and str(d / "config.json") in r.stderr, (name, r.output)


@pytest.mark.slow
def test_the_whole_bad_input_table(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bad_inputs.py"), "--check"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:]
