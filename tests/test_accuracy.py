"""Accuracy against published numbers (slow: run with `make test-slow`).

MAML on sinusoid with the paper's settings (10-shot, one inner step of lr 0.01, meta-batch 25,
Adam 1e-3), 3,000 outer steps, 600 held-out tasks with 100 query points.  learn2learn under the
same protocol: MSE 2.88 before, 0.809 +- 0.065 after 1 step, 0.326 +- 0.036 after 10 steps.
"""

import json
import subprocess
import sys

import pytest


def _run(seed):
    p = subprocess.run([sys.executable, "-m", "metareg", "run", "maml", "--benchmark", "sinusoid", "--steps", "3000",
                        "--seed", str(seed), "--no-save", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.slow
def test_maml_sinusoid_matches_paper_protocol():
    a = _run(0)
    assert a["mse_after_1_step"] <= 0.85, a
    assert a["mse_after_10_steps"] <= 0.36, a
    assert a["mse_before"] > 2.0  # adaptation, not a trivially good prior, is what is measured
    b = _run(0)
    keys = [k for k in a if k.startswith("mse") or k == "final_loss"]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, "same seed must give the same numbers on CPU"
