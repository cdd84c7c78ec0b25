"""Model-based meta-learners (fast weights, Conditional Neural Processes): the batched-over-tasks
implementations against their papers' formulas written out one task and one example at a time
(float64 gradients), permutation invariance of the aggregation, shapes, and a run end to end."""

import ast
import math
import pathlib
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metareg
from metareg import plugins
from metareg.runner import Run

PLUGINS = pathlib.Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture
def manager(blobs_manager):
    return blobs_manager


SMALL_BLOBS = {"benchmark.query": 3, "benchmark.meta_batch": 3, "benchmark.dim": 6, "benchmark.hidden": 16}
SMALL_SINUSOID = {"benchmark.shots": 4, "benchmark.query": 3, "benchmark.meta_batch": 3}
SMALL_NETS = {"cnp": {"encoder_hidden": (8,), "rep_dim": 6, "decoder_hidden": (8,)},
              "fast_weights": {"key_dim": 5, "generator_hidden": 4}}


def _built(algo, bench, manager, **over):
    base = SMALL_SINUSOID if bench == "sinusoid" else SMALL_BLOBS
    r = Run(algo, bench, {"dtype": "float64", **base, **SMALL_NETS[algo], **over}, manager=manager)
    r.build()
    batch = r.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", torch.float64)
    # perturb the learned scalars away from their initial values so every term of the formulas counts
    with torch.no_grad():
        for name in ("decay_raw", "log_beta", "log_scale"):
            if hasattr(r.learner, name):
                getattr(r.learner, name).add_(0.3)
        if hasattr(r.learner, "gain_raw"):
            r.learner.gain_raw.add_(torch.linspace(-0.2, 0.4, r.learner.gain_raw.numel(), dtype=torch.float64))
        if hasattr(r.learner, "gen"):  # the generator's output layer starts at zero: give it a value
            r.learner.gen.add_(0.1 * torch.randn(r.learner.gen.shape, generator=torch.Generator().manual_seed(5),
                                                 dtype=torch.float64))
    return r.learner, batch


def _grads(learner, loss):
    params = [p for p in learner.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _step_grads(learner, batch):
    learner.zero_grad(set_to_none=True)
    learner.step(batch)
    return [p.grad for p in learner.parameters() if p.requires_grad]


# -- fast weights: one task, one support example at a time --------------------------------------
def _fast_weights_reference(m, b):
    """The write rule written out per task and per example (torch.outer), and the read."""
    cfg = m.config
    eta, lam, tau = F.softplus(m.gain_raw), torch.sigmoid(m.decay_raw), m.log_scale.exp()
    losses = []
    for t in range(b.num_tasks):
        one = b.slice(t, t + 1)
        s = one.support_x.shape[1]
        k = m.keys(torch.cat([one.support_x, one.query_x], 1), s)[0]
        ks, kq = k[:s], k[s:]
        if m.classify:
            v = [F.one_hot(one.support_y[0, i], m.out_dim).double() for i in range(s)]
        else:
            v = [one.support_y[0, i] for i in range(s)]

        def out(x, fast):
            return tau * ((m.weight + fast) @ x) + m.bias

        def act(z):
            return torch.softmax(z, -1) if m.classify else z

        if cfg.generator == "outer":
            fast = torch.zeros_like(m.weight)
            for it in range(cfg.write_iterations):
                u = torch.zeros_like(m.weight)
                for i in range(s):
                    e = v[i] if cfg.write_rule == "hebbian" else v[i] - act(out(ks[i], fast))
                    u = u + torch.outer(e, ks[i]) / s
                fast = eta[it] * u if it == 0 else lam * fast + eta[it] * u
            pred = torch.stack([out(kq[j], fast) for j in range(kq.shape[0])])
        else:  # metanet: per-example fast weights, attention over the memory of support keys
            beta = m.log_beta.exp()

            def g(grad, e, key):
                o, d = grad.shape
                inp = torch.stack([grad, e.unsqueeze(1).expand(o, d), key.unsqueeze(0).expand(o, d)], -1)
                return grad + m.gen_net(m.gen, inp.reshape(1, o * d, 3)).view(o, d)

            def att(x):
                return torch.softmax(beta * torch.stack([x @ ks[i] for i in range(s)]), 0)

            fast = [torch.zeros_like(m.weight) for _ in range(s)]  # A(x_i) of each support example
            fast_q = [torch.zeros_like(m.weight) for _ in range(kq.shape[0])]
            for it in range(cfg.write_iterations):
                errs = [v[i] if cfg.write_rule == "hebbian" else v[i] - act(out(ks[i], fast[i])) for i in range(s)]
                w_star = [g(torch.outer(errs[i], ks[i]), errs[i], ks[i]) for i in range(s)]

                def mem(x):
                    a = att(x)
                    return sum(a[i] * w_star[i] for i in range(s))

                new = [mem(ks[i]) for i in range(s)]
                new_q = [mem(kq[j]) for j in range(kq.shape[0])]
                keep = 0.0 if it == 0 else lam
                fast = [keep * fast[i] + eta[it] * new[i] for i in range(s)]
                fast_q = [keep * fast_q[j] + eta[it] * new_q[j] for j in range(kq.shape[0])]
            pred = torch.stack([out(kq[j], fast_q[j]) for j in range(kq.shape[0])])
        if m.classify:
            losses.append(F.cross_entropy(pred, one.query_y[0]))
        else:
            losses.append(((pred - one.query_y[0]) ** 2).mean())
    return torch.stack(losses).mean()


FW_CASES = [
    {"write_rule": "delta", "write_iterations": 3},
    {"write_rule": "hebbian", "write_iterations": 1},
    {"write_rule": "delta", "write_iterations": 2, "generator": "metanet"},
    {"write_rule": "hebbian", "write_iterations": 2, "generator": "metanet"},
]


@pytest.mark.parametrize("bench", ["sinusoid", "blobs"])
@pytest.mark.parametrize("over", FW_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_fast_weights_gradients_equal_per_task_reference(bench, over, manager):
    learner, b = _built("fast_weights", bench, manager, **over)
    got = _step_grads(learner, b)
    want = _grads(learner, _fast_weights_reference(learner, b))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_fast_weights_hebbian_single_write_is_mean_outer_product(manager):
    learner, b = _built("fast_weights", "blobs", manager, write_rule="hebbian", write_iterations=1)
    s = b.support_x.shape[1]
    with torch.no_grad():
        ks = learner.keys(b.support_x, s)
        v = F.one_hot(b.support_y, 3).double()
        eta = F.softplus(learner.gain_raw[0])
        want = eta * torch.einsum("tso,tsd->tod", v, ks) / s
        torch.testing.assert_close(learner.write(ks, v), want)


# -- CNP: one task, one observation at a time -------------------------------------------------
def _cnp_reference(m, b):
    losses = []
    for t in range(b.num_tasks):
        one = b.slice(t, t + 1)
        s = one.support_x.shape[1]
        f = m.embed(torch.cat([one.support_x, one.query_x], 1), s)[0]
        fs, fq = f[:s], f[s:]

        def h(x, y):  # eq. 1, one observation
            return m.enc_net(m.enc, torch.cat([x, y]).view(1, 1, -1))[0, 0]

        def g(x, r):  # eq. 3, one target
            if m.generated:  # the last layer's weights and bias generated from r
                head = m.head_net(m.head, r.view(1, 1, -1))[0, 0].view(m.heads, -1)
                phi = m.dec_net(m.dec, x.view(1, 1, -1))[0, 0]
                return torch.stack([head[j, :-1] @ phi + head[j, -1] for j in range(m.heads)])
            return m.dec_net(m.dec, torch.cat([x, r]).view(1, 1, -1))[0, 0]

        if m.classify:
            n = m.out_dim
            codes = [F.one_hot(one.support_y[0, i], n).double() for i in range(s)]
            r = [h(fs[i], codes[i]) for i in range(s)]
            reps = []
            for c in range(n):
                members = [r[i] for i in range(s) if int(one.support_y[0, i]) == c]
                reps.append(sum(members) / len(members))
            logits = torch.stack([torch.stack([g(fq[j], reps[c])[0] for c in range(n)]) for j in range(fq.shape[0])])
            losses.append(F.cross_entropy(logits, one.query_y[0]))
        else:
            rep = sum(h(fs[i], one.support_y[0, i]) for i in range(s)) / s  # eq. 2, the mean
            nll = []
            for j in range(fq.shape[0]):
                out = g(fq[j], rep)
                o = out.shape[0] // 2
                sigma = m.config.min_std + (1 - m.config.min_std) * F.softplus(out[o:])
                nll.append(-torch.distributions.Normal(out[:o], sigma).log_prob(one.query_y[0, j]).mean())
            losses.append(torch.stack(nll).mean())  # eq. 4
    return torch.stack(losses).mean()


@pytest.mark.parametrize("bench", ["sinusoid", "blobs"])
@pytest.mark.parametrize("conditioning", ["auto", "concat", "weights"])
def test_cnp_gradients_equal_per_task_reference(bench, conditioning, manager):
    learner, b = _built("cnp", bench, manager, conditioning=conditioning)
    assert learner.generated == (conditioning == "weights" or (conditioning == "auto" and bench == "blobs"))
    got = _step_grads(learner, b)
    want = _grads(learner, _cnp_reference(learner, b))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_cnp_nll_metric_is_gaussian_log_likelihood(manager):
    learner, b = _built("cnp", "sinusoid", manager)
    with torch.no_grad():
        mu, sigma = learner.predict(b)
        want = -torch.distributions.Normal(mu, sigma).log_prob(b.query_y).flatten(1).mean(1)
        torch.testing.assert_close(learner.eval_metrics(b)["nll"], want)
        assert (sigma >= learner.config.min_std).all()


# -- permutation invariance ----------------------------------------------------------------------
def _permuted(b, perms):
    idx = torch.tensor(perms)  # [T, S]
    take = lambda a: torch.stack([a[t][idx[t]] for t in range(a.shape[0])])  # noqa: E731
    return metareg.TaskBatch(take(b.support_x), take(b.support_y), b.query_x, b.query_y)


def _support_perms(t, s):
    return st.lists(st.permutations(list(range(s))), min_size=t, max_size=t)


@pytest.mark.parametrize("algo,bench", [("cnp", "sinusoid"), ("cnp", "blobs"), ("fast_weights", "sinusoid"),
                                        ("fast_weights", "blobs")])
def test_prediction_is_invariant_to_the_order_of_the_support_set(algo, bench, manager):
    learner, b = _built(algo, bench, manager)
    t, s = b.support_x.shape[:2]
    with torch.no_grad():
        base = learner.adapt_predict(b, [0])[0]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_support_perms(t, s))
    def check(perms):
        with torch.no_grad():
            torch.testing.assert_close(learner.adapt_predict(_permuted(b, perms), [0])[0], base, rtol=1e-10, atol=1e-12)

    check()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.data())
def test_cnp_aggregation_is_permutation_invariant(s, o, data):
    """The aggregate r of eq. 2 alone, for any support size and target width."""
    torch.manual_seed(0)
    r = torch.randn(2, s, o, dtype=torch.float64)
    y = torch.randint(0, 3, (2, s))
    perm = torch.tensor(data.draw(st.permutations(list(range(s)))))
    from metareg_plugins.cnp import CNP

    for classify in (False, True):
        fake = types.SimpleNamespace(classify=classify, out_dim=3)
        torch.testing.assert_close(CNP.aggregate(fake, r[:, perm], y[:, perm]), CNP.aggregate(fake, r, y))


# -- shapes and runs -----------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["cnp", "fast_weights"])
@pytest.mark.parametrize("bench,out", [("sinusoid", 1), ("blobs", 3)])
def test_prediction_shapes(algo, bench, out, manager):
    learner, b = _built(algo, bench, manager)
    preds = learner.adapt_predict(b, [0, 1, 5])
    assert set(preds) == {0, 1, 5}
    assert preds[0].shape == (*b.query_x.shape[:2], out)


@pytest.mark.parametrize("algo", ["cnp", "fast_weights"])
@pytest.mark.parametrize("bench,metric", [("sinusoid", "mse"), ("blobs", "accuracy")])
def test_tiny_run_reports_one_plain_metric(algo, bench, metric, manager):
    over = {"steps": 3, "eval_tasks": 6, "val_every": 0, "eval_chunk": 4, **SMALL_NETS[algo]}
    over.update(SMALL_SINUSOID if bench == "sinusoid" else SMALL_BLOBS)
    s = Run(algo, bench, over, manager=manager).execute(progress=False)
    assert s["status"] == "completed" and s["eval_tasks"] == 6
    assert math.isfinite(s[metric]) and f"{metric}_ci95" in s
    assert not any(k.startswith(f"{metric}_before") or k.startswith(f"{metric}_after") for k in s)


@pytest.mark.parametrize("algo,over", [("cnp", {}), ("cnp", {"conditioning": "concat"}), ("fast_weights", {}),
                                       ("fast_weights", {"generator": "metanet"})])
def test_learns_blobs_far_above_chance(algo, over, manager):
    s = Run(algo, "blobs", {"steps": 150, "eval_tasks": 200, "val_every": 0, "lr": 3e-3, **SMALL_BLOBS, **over},
            manager=manager).execute(progress=False)
    assert s["accuracy"] > 0.6, s  # chance is 1/3


@pytest.mark.parametrize("name", ["fast_weights", "cnp"])
def test_listed_as_model_based_meta_learners(name, registry):
    spec = registry.get("algorithm", name)
    assert (spec.kind, spec.family) == ("meta", "model")
    assert spec.paper and "episodic" in spec.requires


@pytest.mark.parametrize("name", ["fast_weights.py", "cnp.py"])
def test_plugin_imports_only_the_public_api(name):
    tree = ast.parse((PLUGINS / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""]
            if node.module == "metareg":
                assert all(a.name in metareg.__all__ for a in node.names), ast.dump(node)
        else:
            continue
        for mod in mods:
            assert mod.split(".")[0] in {"metareg", "torch", "math", "collections", "typing", "__future__"}, mod
            assert mod == "metareg" or not mod.startswith("metareg."), mod
