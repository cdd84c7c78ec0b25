import json

from click.testing import CliRunner

from metareg.cli import make_cli
from metareg.compare import split_overrides


def test_split_overrides_routes_keys():
    per = split_overrides(["maml", "hard_sharing"], {"maml.inner_lr": 0.05, "inner_steps": 2, "combiner": "equal",
                                                     "shots": 5, "eval_tasks": 10})
    # maml has a combiner option too (multi-task combiners inside meta-learning), so a bare combiner= reaches both
    assert per["maml"].layers == ({"algorithm.inner_lr": 0.05, "algorithm.inner_steps": 2, "algorithm.combiner": "equal",
                                   "shots": 5, "run.eval_tasks": 10},)
    assert per["hard_sharing"].layers == ({"algorithm.combiner": "equal", "shots": 5, "run.eval_tasks": 10},)


def test_compare_meta_and_multitask_side_by_side(tmp_path):
    out = tmp_path / "cmp"
    r = CliRunner().invoke(make_cli(), ["compare", "maml", "hard_sharing", "-b", "sinusoid_mtl", "--steps", "5",
                                        "--set", "eval_tasks=12", "--set", "maml.inner_lr=0.02", "--out", str(out),
                                        "--jobs", "0", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    rows = {e["algorithm"]: e for e in data["entries"]}
    assert rows["maml"]["kind"] == "meta" and rows["hard_sharing"]["kind"] == "multitask"
    for e in rows.values():
        new = e["scores"]["10"]["new"]
        assert set(new) == {"mse_before", "mse_after_1_step", "mse_after_5_steps"}
        assert all(isinstance(v["mean"], float) for v in new.values())
    assert (out / "compare.csv").exists() and (out / "plots" / "adaptation.png").stat().st_size > 1000
    (maml_dir,) = (out / "runs").glob("maml-seed0-*")
    assert json.loads((maml_dir / "config.json").read_text())["algorithm_config"]["inner_lr"] == 0.02
    assert len(list((out / "runs").glob("hard_sharing-seed0-*/summary.json"))) == 1


def test_compare_typo_is_an_error_before_training(tmp_path):
    out = tmp_path / "cmp"
    r = CliRunner().invoke(make_cli(), ["compare", "maml", "fomaml", "-b", "sinusoid", "--set", "inner_lrr=0.1",
                                        "--out", str(out)])
    assert r.exit_code == 2 and "inner_lr" in r.stderr and not out.exists()
    r = CliRunner().invoke(make_cli(), ["compare", "maml", "pcgrad", "-b", "sinusoid"])
    assert r.exit_code == 2 and "combiner" in r.stderr
