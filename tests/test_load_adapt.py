"""Using a trained model from Python (metareg.load + Learner.adapt) and scoring a saved run on
tasks supplied in a file (metareg eval --tasks FILE)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import metareg
from metareg.cli import make_cli
from metareg.errors import DataError, ShapeError
from metareg.runner import Run

SMALL = {"steps": 30, "eval_tasks": 20, "val_every": 0, "eval_steps": [0, 1, 5]}


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "maml"
    Run("maml", "sinusoid", SMALL, out=out).execute(progress=False)
    return out


@pytest.fixture(scope="module")
def proto_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "proto"
    over = {**SMALL, "steps": 3, "benchmark.meta_batch": 2, "benchmark.query": 3, "benchmark.max_per_group": 3,
            "eval_tasks": 4}
    Run("protonet", "glyphs", over, out=out).execute(progress=False)
    return out


def _sinusoid_batch(t=4, s=10, q=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand(t, 1, 1, generator=g) * 4.9 + 0.1
    phase = torch.rand(t, 1, 1, generator=g) * 3.1416
    x = torch.rand(t, s + q, 1, generator=g) * 10 - 5
    y = amp * torch.sin(x - phase)
    return x[:, :s], y[:, :s], x[:, s:], y[:, s:]


def test_adapt_equals_the_evaluation_path_and_leaves_the_learner_alone(maml_run):
    learner = metareg.load(maml_run)
    assert not learner.training and learner.adapt_steps == 5
    sx, sy, qx, qy = _sinusoid_batch()
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    batched = learner.adapt(sx, sy, steps=5)(qx)
    ref = learner.adapt_predict(metareg.TaskBatch(sx, sy, qx, qy), [5])[5]
    torch.testing.assert_close(batched, ref)
    one = learner.adapt(sx[1], sy[1], steps=5)(qx[1])  # a single task, unbatched
    torch.testing.assert_close(one, ref[1], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[n], p) for n, p in learner.named_parameters())
    # adapting helps: the adapted predictor beats the unadapted one on its task
    zero = learner.adapt(sx, sy, steps=0)(qx)
    assert ((batched - qy) ** 2).mean() < ((zero - qy) ** 2).mean()


def test_adapt_refuses_wrong_shapes_with_the_expected_one(maml_run):
    learner = metareg.load(maml_run)
    with pytest.raises(ShapeError, match=r"support_x must be \[S, 1\]"):
        learner.adapt(torch.zeros(5, 2), torch.zeros(5, 1))
    with pytest.raises(ShapeError, match="support_y must be"):
        learner.adapt(torch.zeros(5, 1), torch.zeros(4, 1))
    with pytest.raises(ShapeError, match="query_x must be"):
        learner.adapt(torch.zeros(5, 1), torch.zeros(5, 1))(torch.zeros(3, 2))


def test_adapt_for_a_metric_learner_on_images(proto_run):
    learner = metareg.load(proto_run)
    assert learner.step_adaptation is False
    g = torch.Generator().manual_seed(3)
    sx = torch.rand(5, 1, 28, 28, generator=g)
    scores = learner.adapt(sx, torch.arange(5))(sx)
    assert scores.shape == (5, 5)
    assert (scores.argmax(-1) == torch.arange(5)).all()  # each support image is nearest its own prototype


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_eval_tasks_file_scores_the_given_tasks(maml_run, tmp_path, suffix):
    sx, sy, qx, qy = _sinusoid_batch(t=6)
    f = tmp_path / f"tasks{suffix}"
    if suffix == ".pt":
        torch.save({"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy}, f)
    else:
        np.savez(f, support_x=sx.numpy(), support_y=sy.numpy(), query_x=qx.numpy(), query_y=qy.numpy())
    r = CliRunner().invoke(make_cli(), ["eval", str(maml_run), "--tasks", str(f), "--json", "--no-save"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["eval_tasks"] == 6 and res["tasks"] == str(f)
    learner = metareg.load(maml_run)
    want = ((learner.adapt(sx, sy, steps=5)(qx) - qy) ** 2).mean().item()
    assert res["mse_after_5_steps"] == pytest.approx(want, rel=1e-5)


def test_eval_tasks_file_errors_name_the_file_and_the_shape(maml_run, tmp_path):
    sx, sy, qx, qy = _sinusoid_batch()
    bad = tmp_path / "bad.pt"
    torch.save({"support_x": sx.squeeze(-1), "support_y": sy, "query_x": qx, "query_y": qy}, bad)
    r = CliRunner().invoke(make_cli(), ["eval", str(maml_run), "--tasks", str(bad), "--no-save"])
    assert r.exit_code == 2 and str(bad) in r.stderr and "support_x must be float [T, N, 1]" in r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot be read"):
        from metareg.evaluate import load_task_file

        load_task_file(junk, metareg.load(maml_run).task)
