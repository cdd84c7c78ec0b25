"""MetaGAN (plugins/metagan.py): the discriminator and generator losses against the paper's formulas
written out one task and one example at a time (float64 values and gradients, both base learners),
the task-conditioned generator's shapes and per-task independence, registration, the clean refusal
of regression benchmarks, and runs end to end (with a checkpoint resumed)."""

import math

import pytest
import torch
from click.testing import CliRunner

import metareg
from metareg.cli import make_cli
from metareg.errors import IncompatibleError
from metareg.runner import Run
from metareg_plugins.metagan import Generator, MetaGAN, MetaGANConfig, gan_losses

SMALL_BLOBS = {"benchmark.query": 3, "benchmark.meta_batch": 3, "benchmark.dim": 6, "benchmark.hidden": 16}
SMALL_GEN = {"noise_dim": 5, "task_dim": 4, "gen_width": 3}


@pytest.fixture
def manager(blobs_manager):
    return blobs_manager


def _built(manager, **over):
    r = Run("metagan", "blobs", {"dtype": "float64", **SMALL_BLOBS, **SMALL_GEN, **over}, manager=manager)
    r.build()
    batch = r.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", torch.float64)
    m = r.learner
    with torch.no_grad():  # move the learned offset away from its initial value so its term counts
        if hasattr(m.d, "log_gamma"):
            m.d.log_gamma.add_(0.3)
    return m, batch


# -- the paper's formulas, one task and one example at a time ---------------------------------------
def _p_d(l):
    """p_D(. | x) over N+1 classes from the N real logits (the fake logit is 0): [N+1]."""
    e = torch.exp(l)
    return torch.cat([e, torch.ones(1, dtype=l.dtype)]) / (1 + e.sum())


def _minus_l_d(logits, labels, n):
    """-(L_supervised + L_unsupervised) of one set: logits [M, N], labels [M] (n = fake)."""
    sup, real, fake = [], [], []
    for l, y in zip(logits, labels):
        p = _p_d(l)
        if int(y) < n:
            sup.append(torch.log(p[int(y)] / p[:n].sum()))  # log p_D(y | x, y <= N)
            real.append(torch.log(p[:n].sum()))  # log p_D(y <= N | x)
        else:
            fake.append(torch.log(p[n]))  # log p_D(N+1 | x)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    l_d = mean(sup) + mean(real) + (mean(fake) if fake else 0.0)
    return -l_d


def _feature_matching(feats, labels, n):
    real = [f for f, y in zip(feats, labels) if int(y) < n]
    fake = [f for f, y in zip(feats, labels) if int(y) >= n]
    return ((sum(real) / len(real) - sum(fake) / len(fake)) ** 2).sum()


def _reference(m, b, z):
    """(-L_D, L_G), each the mean over the episodes of the per-episode losses."""
    n = m.ways
    fakes_s, fakes_q = m.fakes(b, z)  # the generator, batched: its batch norm is per task (tested below)
    d_losses, g_losses = [], []
    for t in range(b.num_tasks):
        sx, sy, qx, qy = b.support_x[t], b.support_y[t], b.query_x[t], b.query_y[t]
        fq = fakes_q[t]
        yq = torch.cat([qy, torch.full((fq.shape[0],), n)])
        if m.config.base == "protonet":
            d = m.d
            s = sx.shape[0]
            emb = d.embed(torch.cat([sx, qx, fq]).unsqueeze(0), support_size=s)[0]
            es, eq = emb[:s], emb[s:]
            protos = [sum(es[i] for i in range(s) if int(sy[i]) == k) / int((sy == k).sum()) for k in range(n)]
            pairs = [((protos[j] - protos[k]) ** 2).sum() for j in range(n) for k in range(j + 1, n)]
            b_t = d.log_gamma.exp() * sum(pairs) / len(pairs)
            logits = torch.stack([torch.stack([b_t - ((x - c) ** 2).sum() for c in protos]) for x in eq])
            feats = eq
        else:
            d, net = m.d, m.d.net
            xs = torch.cat([sx, fakes_s[t]])
            ys = torch.cat([sy, torch.full((fakes_s.shape[1],), n)])
            fast = d.theta
            for _ in range(m.config.inner_steps):  # eq. 1 on -L_D of the support set with its fakes
                inner = _minus_l_d(net.forward(fast, xs.unsqueeze(0), support_size=xs.shape[0])[0], ys, n)
                (g,) = torch.autograd.grad(inner, fast, create_graph=True)
                fast = fast - m.config.inner_lr * g
            ho = net.head_offset
            feats = net.forward(fast[:ho], torch.cat([xs, qx, fq]).unsqueeze(0), 0, net.head_from,
                                support_size=xs.shape[0])[0, xs.shape[0]:]
            logits = net.forward(fast[ho:], feats.unsqueeze(0), net.head_from)[0]
            feats = feats.flatten(1)
        d_losses.append(_minus_l_d(logits, yq, n))
        g_losses.append(_feature_matching(feats, yq, n))
    return torch.stack(d_losses).mean(), torch.stack(g_losses).mean()


CASES = [{"base": "protonet"}, {"base": "maml", "inner_lr": 0.3, "inner_steps": 2},
         {"base": "maml", "inner_lr": 0.3, "fakes": 1}]


@pytest.mark.parametrize("over", CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_losses_equal_the_papers_formulas(over, manager):
    m, b = _built(manager, **over)
    z = m.noise(b, torch.Generator().manual_seed(3))
    d_loss, g_loss, _, _ = m.objectives(b, z)
    want_d, want_g = _reference(m, b, z)
    torch.testing.assert_close(d_loss, want_d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_loss, want_g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("over", CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_step_gradients_equal_per_task_reference(over, manager):
    """D's gradients are those of -L_D, G's those of L_G (simultaneous update), per task reference."""
    m, b = _built(manager, **over)
    state = m.context.generator.get_state()
    m.zero_grad(set_to_none=True)
    metrics = m.step(b)
    m.context.generator.set_state(state)
    z = m.noise(b, m.context.generator)  # the noise the step drew
    want_d, want_g = _reference(m, b, z)
    d_params, g_params = list(m.d.parameters()), list(m.gen.parameters())
    want = (list(torch.autograd.grad(want_d, d_params, retain_graph=True, allow_unused=True))
            + list(torch.autograd.grad(want_g, g_params, allow_unused=True)))
    for p, w in zip(d_params + g_params, want, strict=True):
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(p.grad, w, rtol=1e-9, atol=1e-11)
    assert metrics["loss"] == pytest.approx(want_d.item(), rel=1e-10)
    assert metrics["gen_loss"] == pytest.approx(want_g.item(), rel=1e-10)
    assert all(p.grad.abs().sum() > 0 for p in g_params)  # the generator learns from L_G


def test_gan_losses_match_probabilities_on_fixed_logits():
    """The vectorised -L_D against p_D written out, on fixed logits with real and fake examples."""
    logits = torch.tensor([[[2.0, -1.0, 0.5], [-3.0, -2.5, -4.0], [0.1, 0.2, 0.3], [5.0, 4.0, -1.0]]],
                          dtype=torch.float64)
    y = torch.tensor([[0, 2, 3, 3]])
    want = _minus_l_d(logits[0], y[0], 3)
    torch.testing.assert_close(gan_losses(logits, y, 3)[0], want, rtol=1e-12, atol=1e-14)
    half = gan_losses(logits, y, 3, 0.5)[0]  # the unsupervised weight scales L_unsupervised only
    sup = -(torch.log_softmax(logits[0, :2], -1)[[0, 1], [0, 2]]).mean()
    torch.testing.assert_close(half, sup + 0.5 * (want - sup), rtol=1e-12, atol=1e-14)


# -- the generator ------------------------------------------------------------------------------------
def test_generator_makes_28x28_images_per_task():
    cfg = MetaGANConfig(noise_dim=7, task_dim=6, gen_width=4)
    g = Generator((1, 28, 28), cfg, torch.Generator().manual_seed(0), torch.float64)
    assert g.conv
    sx = torch.rand(2, 5, 1, 28, 28, dtype=torch.float64)
    z = torch.randn(2, 6, 7, dtype=torch.float64)
    out = g(sx, z)
    assert out.shape == (2, 6, 1, 28, 28) and bool(((out > 0) & (out < 1)).all())  # glyph pixels are in [0, 1]
    z2 = z.clone()
    z2[1] += 1.0
    sx2 = sx.clone()
    sx2[1] = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(g(sx2, z2)[0], out[0])  # one task's fakes ignore the other task
    assert not torch.allclose(g(sx2, z)[1], out[1])  # and depend on their own support set


# -- registry, refusal, runs ----------------------------------------------------------------------------
def test_listed_as_model_based_meta_learner(registry):
    spec = registry.get("algorithm", "metagan")
    assert (spec.kind, spec.family) == ("meta", "model")
    assert {"episodic", "classification"} <= spec.requires and "MetaGAN" in spec.paper


def test_regression_benchmark_refused_cleanly(tmp_path):
    with pytest.raises(IncompatibleError, match="classification"):
        Run("metagan", "sinusoid", {}).build()
    out = tmp_path / "out"
    r = CliRunner().invoke(make_cli(), ["run", "metagan", "-b", "sinusoid", "--out", str(out)], catch_exceptions=False)
    err = r.stderr.strip()
    assert r.exit_code == 2 and "classification" in err and "\n" not in err and not out.exists()


@pytest.mark.parametrize("base", ["protonet", "maml"])
def test_prediction_uses_the_real_classes_only(base, manager):
    m, _ = _built(manager, base=base)
    ev = Run("metagan", "blobs", {**SMALL_BLOBS}, manager=manager)
    ev.build()
    b = ev.bench.eval_batch(torch.Generator().manual_seed(1), 2).to("cpu", torch.float64)
    preds = m.adapt_predict(b, [0, 1])
    want = {0} if base == "protonet" else {0, 1}
    assert set(preds) >= want
    for p in preds.values():
        assert p.shape == (*b.query_x.shape[:2], 3)  # N real logits, the real queries
    again = m.adapt_predict(b, [0, 1])  # the evaluation fakes come from a fixed seed
    for k in preds:
        torch.testing.assert_close(again[k], preds[k])


@pytest.mark.parametrize("base", ["protonet", "maml"])
def test_tiny_run(base, manager):
    over = {"steps": 3, "eval_tasks": 6, "val_every": 0, "eval_chunk": 4, "base": base, **SMALL_BLOBS, **SMALL_GEN}
    s = Run("metagan", "blobs", over, manager=manager).execute(progress=False)
    assert s["status"] == "completed" and s["eval_tasks"] == 6 and math.isfinite(s["final_loss"])
    key = "accuracy" if base == "protonet" else "accuracy_after_1_step"
    assert math.isfinite(s[key])


def test_resume_draws_the_same_fakes(tmp_path, monkeypatch, manager):
    """A run interrupted after a checkpoint and resumed ends with the parameters of an unbroken run
    (the training noise comes from the learner's generator, which the checkpoint holds)."""
    over = {"steps": 4, "eval_tasks": 4, "val_every": 0, "base": "maml", "inner_lr": 0.1, **SMALL_BLOBS, **SMALL_GEN}
    full, part = tmp_path / "full", tmp_path / "part"
    Run("metagan", "blobs", over, manager=manager, out=full).execute(progress=False)
    real_step, calls = MetaGAN.step, []

    def step(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(MetaGAN, "step", step)
    cadence = {"checkpoint_every": 2, "checkpoint_every_s": 0}
    assert Run("metagan", "blobs", {**over, **cadence}, manager=manager, out=part).execute(
        progress=False)["status"] == "interrupted"
    monkeypatch.setattr(MetaGAN, "step", real_step)
    assert Run.from_folder(part, manager=manager).execute(progress=False, resume=True)["status"] == "completed"
    a = torch.load(full / "checkpoint.pt", weights_only=True)["learner"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["learner"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_plugin_imports_only_the_public_api():
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).resolve().parents[1] / "plugins" / "metagan.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "metareg":
            assert all(a.name in metareg.__all__ for a in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert all(mod.split(".")[0] in {"metareg", "torch", "math", "collections", "typing", "__future__"}
                       and (mod == "metareg" or not mod.startswith("metareg.")) for mod in mods), mods
