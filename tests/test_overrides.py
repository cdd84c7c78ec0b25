"""Override resolution (metareg.overrides): one set of rules for run, compare and eval."""

import json

import pytest

from metareg.errors import ConfigError
from metareg.overrides import Overrides, parse_sets, resolve_sections, saved_overrides
from metareg.runner import Run, RunConfig
from metareg.tasks import SinusoidConfig

from metareg.learners import GradientMetaConfig

CLASSES = {"algorithm": GradientMetaConfig, "benchmark": SinusoidConfig, "run": RunConfig}


def test_bare_qualified_and_table_keys_land_in_their_sections():
    s = resolve_sections({"inner_lr": 0.1, "benchmark.shots": 5, "run": {"steps": 7}, "combiner.seed": 3}, CLASSES)
    assert s["algorithm"] == {"inner_lr": 0.1} and s["benchmark"] == {"shots": 5}
    assert s["run"] == {"steps": 7} and s["combiner"] == {"seed": 3}


def test_the_same_setting_twice_in_one_layer_is_an_error():
    # a TOML file with `shots = 5` at the top and `[benchmark] shots = 3`
    with pytest.raises(ConfigError, match=r"'benchmark.shots' is set twice with different values: shots = 5 and \[benchmark\] shots = 3"):
        resolve_sections({"shots": 5, "benchmark": {"shots": 3}}, CLASSES)
    assert resolve_sections({"shots": 5, "benchmark": {"shots": 5}}, CLASSES)["benchmark"] == {"shots": 5}


def test_later_layers_win_whatever_the_spelling():
    s = resolve_sections(Overrides({"benchmark": {"shots": 3}}, {"shots": 5}, {"run.steps": 9}), CLASSES)
    assert s["benchmark"]["shots"] == 5 and s["run"]["steps"] == 9


def test_one_pair_per_set():
    with pytest.raises(ConfigError, match="one key=value per --set"):
        parse_sets(["adapt_encoder=true head_fit=sgd"])
    assert parse_sets(["eval_steps=[0, 1]", "name=a b"]) == {"eval_steps": [0, 1], "name": "a b"}


def test_saved_config_round_trips_as_tables(tmp_path):
    run = Run("hard_sharing", "sinusoid_mtl", {"steps": 2, "combiner": "pcgrad", "combiner.seed": 4, "shots": 7,
                                               "eval_tasks": 3, "val_every": 0})
    saved = json.loads(json.dumps(run.resolved_config(), default=list))
    again = Run(saved["algorithm_ref"], saved["benchmark_ref"], Overrides(saved_overrides(saved)))
    assert again.resolved_config() == run.resolved_config()
    with pytest.raises(ConfigError, match="must be a table"):
        saved_overrides({"run_config": [1, 2]})
