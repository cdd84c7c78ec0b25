"""Every registered combiner trains hard sharing on sinusoid_mtl through the runner."""

import math

import pytest
from combiner_util import combiner_names

import metareg.runner


@pytest.mark.parametrize("name", combiner_names())
def test_hard_sharing_runs_with_combiner(name):
    summary = metareg.runner.Run(
        "hard_sharing", "sinusoid_mtl", {"combiner": name, "steps": 20, "eval_tasks": 20, "val_every": 0}
    ).execute(progress=False)
    assert summary["status"] == "completed"
    assert math.isfinite(summary["final_loss"])
    mse = [v for k, v in summary.items() if k.startswith("mse_") and not k.endswith("ci95")]
    assert mse and all(math.isfinite(v) for v in mse)


# -- combiner options and state through the runner ----------------------------------------------

def _pcgrad_run(extra, out=None):
    over = {"combiner": "pcgrad", "steps": 3, "eval_tasks": 4, "val_every": 0, **extra}
    return metareg.runner.Run("hard_sharing", "sinusoid_mtl", over, out=out)


def test_combiner_options_are_set_from_a_run(tmp_path):
    run = _pcgrad_run({"combiner.seed": 5}, out=tmp_path / "r")
    assert run.combiner_config.seed == 5
    run.execute(progress=False)
    assert run.learner.combiner.config.seed == 5
    import json

    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["combiner_config"] == {"seed": 5}
    # a TOML-style table works the same
    assert _pcgrad_run({"combiner": {"seed": 7}, "algorithm.combiner": "pcgrad"}).combiner_config.seed == 7


def test_combiner_options_follow_an_overridden_combiner():
    # the options are checked against the combiner finally chosen, not the learner's default
    run = metareg.runner.Run("hard_sharing", "sinusoid_mtl", {"combiner": "cagrad", "combiner.c": 0.2})
    assert run.combiner_config.c == 0.2


@pytest.mark.parametrize("over, words", [
    ({"combiner.sead": 1}, ["sead", "seed"]),
    ({"combiner.seed": "abc"}, ["seed"]),
])
def test_bad_combiner_options_are_config_errors(over, words):
    with pytest.raises(metareg.errors.ConfigError) as e:
        _pcgrad_run(over)
    assert all(w in str(e.value) for w in words)


def test_combiner_options_on_a_learner_without_combiner():
    with pytest.raises(metareg.errors.ConfigError, match="takes no combiner"):
        metareg.runner.Run("cnp", "sinusoid", {"combiner.seed": 1})


def test_checkpoint_restores_the_combiners_random_state(tmp_path):
    import torch

    run = _pcgrad_run({}, out=tmp_path / "r")
    run.execute(progress=False)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["learner"]
    fresh = _pcgrad_run({})
    fresh.build()
    fresh.learner.load_state_dict(state)
    # the training steps advanced the generator; the checkpoint carries that state, not the seed's
    untrained = _pcgrad_run({})
    untrained.build()
    assert not torch.equal(untrained.learner.combiner.generator.get_state(), fresh.learner.combiner.generator.get_state())
    assert torch.equal(fresh.learner.combiner.generator.get_state(), run.learner.combiner.generator.get_state())
    assert torch.equal(fresh.learner.combiner.projection_order(3), run.learner.combiner.projection_order(3))
