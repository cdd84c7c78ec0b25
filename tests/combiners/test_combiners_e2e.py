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
