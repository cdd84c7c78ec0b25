"""The hybrid learner (plugins/hybrid.py): multi-task pre-training, then meta-learning from the encoder.

* the phase switches after exactly ``pretrain_steps`` steps, and each phase trains only its own
  sub-learner (the other's parameters are frozen: no gradient, untouched by the optimizer);
* at the switch the pre-trained encoder is copied exactly into the meta-learner's body;
* a run resumed mid-pre-training continues the phase and ends with the same parameters as an
  uninterrupted run; both phases are in metrics.jsonl.
"""

import json

import pytest
import torch

from metareg.runner import Run
from metareg_plugins.hybrid import Hybrid

SMALL = {"benchmark.meta_batch": 2, "benchmark.num_tasks": 3, "run.eval_tasks": 4, "run.val_every": 0,
         "run.eval_steps": [0, 1], "run.eval_chunk": 2, "run.log_every": 1}


def _run(steps, pretrain, out=None, **extra):
    over = {**SMALL, "run.steps": steps, "algorithm.pretrain_steps": pretrain, **extra}
    return Run("hybrid", "sinusoid_mtl", over, out=out)


def _train(run, steps):
    run.build()
    gen = torch.Generator().manual_seed(0)
    phases = []
    for _ in range(steps):
        batch = run.bench.train_batch(gen)
        run.optimizer.zero_grad(set_to_none=True)
        before_meta = run.learner.meta.theta.detach().clone()
        before_mtl = run.learner.pretrainer.shared.detach().clone()
        m = run.learner.step(batch)
        run.optimizer.step()
        phases.append(m["phase"])
        if m["phase"] == 0:  # the meta-learner is frozen while pre-training, and vice versa
            assert run.learner.meta.theta.grad is None
            assert torch.equal(run.learner.meta.theta.detach(), before_meta)
            assert run.learner.pretrainer.shared.grad is not None
        else:
            assert run.learner.pretrainer.shared.grad is None and run.learner.pretrainer.heads.grad is None
            assert torch.equal(run.learner.pretrainer.shared.detach(), before_mtl)
            assert run.learner.meta.theta.grad is not None
    return phases


def test_phase_switches_after_pretrain_steps():
    run = _run(6, 3)
    assert _train(run, 6) == [0, 0, 0, 1, 1, 1]
    assert int(run.learner.steps_done) == 6


def test_no_pretraining_is_pure_meta_learning():
    assert _train(_run(3, 0), 3) == [1, 1, 1]


def test_encoder_copied_exactly_at_the_switch():
    run = _run(3, 2)
    _train(run, 2)
    learner = run.learner
    shared = learner.pretrainer.shared.detach().clone()
    head = learner.meta.theta.detach()[shared.shape[0]:].clone()
    assert not torch.equal(learner.meta.theta.detach()[: shared.shape[0]], shared)
    gen = torch.Generator().manual_seed(5)
    batch = run.bench.train_batch(gen)
    run.optimizer.zero_grad(set_to_none=True)
    m = learner.step(batch)  # the first meta step starts from the pre-trained encoder
    assert m["phase"] == 1
    body = learner.meta.theta.detach()[: shared.shape[0]]
    assert torch.equal(body, shared)  # the step only filled .grad: theta is the copy itself
    assert torch.equal(learner.meta.theta.detach()[shared.shape[0]:], head)  # the head keeps its own init


def _final_state(out):
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return state["learner"]


def test_resume_mid_pretraining_continues_the_phase(tmp_path, monkeypatch):
    full = tmp_path / "full"
    _run(6, 4, out=full).execute(progress=False)
    part = tmp_path / "part"
    cadence = {"run.checkpoint_every": 2, "run.checkpoint_every_s": 0}
    real_step, calls = Hybrid.step, []

    def step(self, batch):  # Ctrl-C during step 3: the checkpoint of step 2 (mid-pre-training) stays
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Hybrid, "step", step)
    assert _run(6, 4, out=part, **cadence).execute(progress=False)["status"] == "interrupted"
    monkeypatch.setattr(Hybrid, "step", real_step)
    assert int(_final_state(part)["steps_done"]) == 2
    summary = Run.from_folder(part).execute(progress=False, resume=True)
    assert summary["status"] == "completed"
    a, b = _final_state(full), _final_state(part)
    assert int(b["steps_done"]) == 6
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in lines if r.get("split") == "train"]
    assert phases == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("then", ["fomaml", "anil"])
def test_other_meta_learners(then):
    run = _run(3, 1, **{"algorithm.then": then})
    assert _train(run, 3) == [0, 1, 1]
    preds = run.learner.adapt_predict(run.bench.eval_batch(torch.Generator().manual_seed(1), 2), [0, 1])
    assert set(preds) == {0, 1}
