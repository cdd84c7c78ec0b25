"""End to end through a real entry point: pip-install the example package into a folder, put it
on the path, and check that `metareg list` shows it and `metareg run` runs it, in a new process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "metareg-example"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    p = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True,
    )
    if p.returncode != 0:
        pytest.fail(f"pip could not install the example plugin: {p.stderr[-2000:]}")
    return target


def _metareg(site, *args):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "metareg", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_with_its_package(site):
    p = _metareg(site, "list", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    bench = {b["name"]: b for b in data["benchmarks"]}["linear"]
    algo = {a["name"]: a for a in data["algorithms"]}["clipped_maml"]
    assert bench["plugin"] == "example" and bench["package"] == "metareg-example"
    assert algo["package"] == "metareg-example"
    assert data["plugin_errors"] == []
    plug = json.loads(_metareg(site, "plugins", "--json").stdout)
    ex = {q["name"]: q for q in plug["plugins"]}["example"]
    assert ex["version"] == "0.1.0"
    assert set(ex["hooks"]) == {"register_algorithms", "register_benchmarks", "register_backbones", "on_run_start",
                                "on_step_end", "on_run_end"}
    assert {"algorithm:nearest_neighbour", "algorithm:gated_sharing", "algorithm:random_weighting",
            "backbone:narrow_mlp", "benchmark:linear"} <= set(ex["registered"])


def test_installed_plugin_runs(site):
    p = _metareg(site, "run", "clipped_maml", "--benchmark", "linear", "--steps", "30", "--set", "eval_tasks=20",
                 "--no-save", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["algorithm"] == "clipped_maml" and s["mse_after_1_step"] < s["mse_before"]


def test_plugin_can_be_disabled(site, monkeypatch):
    monkeypatch.setenv("METAREG_DISABLE_PLUGINS", "example")
    p = _metareg(site, "list", "--json")
    assert "linear" not in {b["name"] for b in json.loads(p.stdout)["benchmarks"]}


def test_broken_installed_plugin_is_reported_and_rest_loads(site, tmp_path):
    # a second distribution whose module raises on import
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[metareg]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise ImportError('needs libfoo')\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{tmp_path}"}
    p = subprocess.run([sys.executable, "-m", "metareg", "plugins", "--json"], capture_output=True, text=True, env=env)
    data = json.loads(p.stdout)
    (err,) = data["errors"]
    assert err["name"] == "broken" and err["package"] == "broken-plugin" and err["version"] == "1.0"
    assert "needs libfoo" in err["cause"]
    assert "example" in {q["name"] for q in data["plugins"]} and "maml" in {q["name"] for q in data["plugins"]}
    p = subprocess.run([sys.executable, "-m", "metareg", "list"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "maml" in p.stdout and "plugin 'broken' from broken-plugin 1.0" in p.stderr
    p = subprocess.run([sys.executable, "-m", "metareg", "plugins", "--strict"], capture_output=True, text=True, env=env)
    assert p.returncode == 2


def test_every_example_passes_check_plugin(site):
    p = _metareg(site, "check-plugin", "metareg-example", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    checks = {r["check"]: r["status"] for r in res["results"]}
    assert res["failed"] == 0 and all(v == "passed" for v in checks.values()), checks
    for needle in ("clipped_maml on linear", "gated_sharing on sinusoid_mtl", "nearest_neighbour on glyphs",
                   "combiner random_weighting", "backbone narrow_mlp", "benchmark linear"):
        assert any(c.startswith(needle) for c in checks), (needle, checks)


def test_check_plugin_fails_on_a_broken_package(site, tmp_path):
    """A package whose learner breaks the contract fails check-plugin with exit status 1."""
    dist = tmp_path / "bad_learner-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-learner\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[metareg]\nbad = bad_learner_mod\n")
    (tmp_path / "bad_learner_mod.py").write_text(
        "import metareg\n"
        "@metareg.config\nclass C(metareg.GradientMetaConfig):\n    pass\n"
        "@metareg.algorithm('nan_maml', kind='meta', family='optimization', summary='s', paper='p', config=C,"
        " requires={'episodic'})\n"
        "class NaNMAML(metareg.GradientMetaLearner):\n"
        "    def step(self, batch):\n"
        "        out = super().step(batch)\n"
        "        for p in self.parameters():\n"
        "            p.grad.fill_(float('nan'))\n"
        "        return out\n"
        "@metareg.hookimpl\ndef register_algorithms(register):\n    register(NaNMAML)\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{tmp_path}"}
    p = subprocess.run([sys.executable, "-m", "metareg", "check-plugin", "bad-learner"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 1 and "FAIL nan_maml on sinusoid: one step" in p.stdout and "non-finite gradient" in p.stdout


def test_benchmark_input_size_from_config_and_observer_output(site, tmp_path):
    out = tmp_path / "run"
    p = _metareg(site, "run", "clipped_maml", "--benchmark", "linear", "--steps", "20", "--set", "dim=3",
                 "--set", "eval_tasks=10", "--set", "val_every=0", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "config.json").read_text())["benchmark_config"]["dim"] == 3
    rows = (out / "loss_curve.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 21 and rows[-1].startswith("20,")
    p = _metareg(site, "run", "gated_sharing", "--benchmark", "sinusoid_mtl", "--steps", "5", "--set", "combiner=random_weighting",
                 "--set", "backbone=narrow_mlp", "--set", "eval_tasks=10", "--set", "val_every=0", "--no-save", "--json")
    assert p.returncode == 0, p.stderr


README = ROOT / "README.md"


def test_readme_plugin_examples_are_the_tested_files():
    """Every code block the README takes from the example package is verbatim in that file."""
    import re

    text = README.read_text()
    blocks = re.findall(r"<!-- from (\S+) -->\n```(?:python|toml)\n(.*?)```", text, re.S)
    assert len(blocks) >= 7
    for path, code in blocks:
        assert code in (ROOT / path).read_text(), f"README block from {path} differs from the file"

