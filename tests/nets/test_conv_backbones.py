"""Conv4 / ResNet-12: the task-batched forward equals a per-task loop, and second-order MAML
gradients through the grouped convolutions and the fused batch norm equal the loop's (the batch
norm on its own: tests/nets/test_batchnorm.py)."""

import pytest
import torch
import torch.nn.functional as F

from metareg.errors import ConfigError
from metareg.nets import conv
from metareg.nets.batchnorm import batch_norm
from metareg.nets.conv import conv4, resnet12

D = torch.float64


def _nets():
    return {
        "conv4": conv4((1, 16, 16), 3, width=4),
        "resnet12": resnet12((2, 16, 16), 3, widths=(3, 4, 5, 6)),
    }


@pytest.mark.parametrize("im2col_max", [0, 32, 10**6], ids=["grouped", "mixed", "im2col"])
@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_batched_forward_equals_per_task_loop(name, im2col_max, monkeypatch):
    # both lowerings of the batched convolution (grouped conv, im2col + bmm) must match the loop
    monkeypatch.setattr(conv, "IM2COL_MAX", im2col_max)
    net = _nets()[name]
    g = torch.Generator().manual_seed(0)
    t, n = 3, 5
    # per-task parameters that really differ, so a mix-up of tasks in the grouped conv shows
    flat = torch.stack([net.init_flat(g, dtype=D) for _ in range(t)])
    flat = flat + 0.1 * torch.randn(flat.shape, generator=g, dtype=D)
    c = 1 if name == "conv4" else 2
    x = torch.randn(t, n, c, 16, 16, generator=g, dtype=D)
    out = net(flat, x)
    assert out.shape == (t, n, 3)
    loop = torch.cat([net(flat[i], x[i : i + 1]) for i in range(t)])
    torch.testing.assert_close(out, loop, rtol=1e-10, atol=1e-10)
    # shared parameters [P]: the same as giving every task the same row
    shared = net(flat[0], x)
    torch.testing.assert_close(shared, net(flat[0].expand(t, -1).contiguous(), x), rtol=1e-10, atol=1e-10)


def _ce(pred, y):
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1), reduction="none").view(y.shape).mean(1)


@pytest.mark.parametrize("im2col_max", [0, 32], ids=["grouped", "mixed"])
@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_second_order_maml_gradient_equals_per_task_loop(name, im2col_max, monkeypatch):
    monkeypatch.setattr(conv, "IM2COL_MAX", im2col_max)
    net = _nets()[name]
    g = torch.Generator().manual_seed(1)
    t, s, q, c = 3, 4, 6, (1 if name == "conv4" else 2)
    theta = net.init_flat(g, dtype=D).requires_grad_()
    xs, xq = torch.randn(t, s, c, 16, 16, generator=g, dtype=D), torch.randn(t, q, c, 16, 16, generator=g, dtype=D)
    ys, yq = torch.randint(0, 3, (t, s), generator=g), torch.randint(0, 3, (t, q), generator=g)
    lr = 0.3

    # batched: one [T, P] fast-weight buffer, grouped convolutions, create_graph through the step
    fast = theta.expand(t, -1)
    (gr,) = torch.autograd.grad(_ce(net(fast, xs), ys).sum(), fast, create_graph=True)
    fast = fast - lr * gr
    (meta_batched,) = torch.autograd.grad(_ce(net(fast, xq), yq).mean(), theta)

    meta_loop = torch.zeros_like(theta)
    for i in range(t):
        (gi,) = torch.autograd.grad(_ce(net(theta, xs[i : i + 1]), ys[i : i + 1]).sum(), theta, create_graph=True)
        fi = theta - lr * gi
        (mi,) = torch.autograd.grad(_ce(net(fi, xq[i : i + 1]), yq[i : i + 1]).mean() / t, theta)
        meta_loop += mi
    assert meta_batched.abs().max() > 1e-6
    torch.testing.assert_close(meta_batched, meta_loop, rtol=1e-9, atol=1e-11)

    # the second-order term is present: first-order gradients differ
    fast_fo = theta.expand(t, -1) - lr * gr.detach()
    (meta_fo,) = torch.autograd.grad(_ce(net(fast_fo, xq), yq).mean(), theta)
    assert not torch.allclose(meta_fo, meta_batched, rtol=1e-6, atol=1e-9)


def test_conv4_parameter_count_matches_the_published_conv4():
    # 4 conv (with bias) + 4 BN (scale, shift) + linear 64 -> 5: 640 + 3*36,928 + 512 + 325
    assert conv4((1, 28, 28), 5).num_params == 112_261
    # MAML's miniImageNet net: 32 filters, 5x5x32 features into the head
    assert conv4((3, 84, 84), 5, width=32).num_params == 32_901


def test_non_transductive_batch_norm_uses_support_statistics_only():
    net = conv4((1, 16, 16), 3, width=4, transductive=False)
    g = torch.Generator().manual_seed(4)
    theta = net.init_flat(g, dtype=D)
    s, q = 4, 5
    x = torch.randn(2, s + q, 1, 16, 16, generator=g, dtype=D)
    out = net(theta, x, support_size=s)
    x2 = x.clone()
    x2[:, s + 1 :] = torch.randn(x2[:, s + 1 :].shape, generator=g, dtype=D) * 5
    out2 = net(theta, x2, support_size=s)
    # changing other query examples leaves a query prediction (and the support ones) unchanged
    torch.testing.assert_close(out[:, : s + 1], out2[:, : s + 1])
    # the support forward alone gives the support predictions of the joint forward
    torch.testing.assert_close(net(theta, x[:, :s], support_size=s), out[:, :s])
    with pytest.raises(ConfigError, match="support_size"):
        net(theta, x)

    trans = conv4((1, 16, 16), 3, width=4)
    a, b = trans(theta, x), trans(theta, x2)
    assert not torch.allclose(a[:, s], b[:, s]), "transductive statistics should see the whole query set"


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="images shaped"):
        conv4((10,), 5)
    with pytest.raises(ConfigError, match="at least 16x16"):
        conv4((1, 8, 8), 5)
    with pytest.raises(ConfigError, match="four positive"):
        resnet12((3, 84, 84), 5, widths=(64, 128))


def test_backbones_are_registered(registry):
    for name in ("mlp", "conv4", "resnet12"):
        spec = registry.get("backbone", name)
        assert spec.name == name
    net = registry.get("backbone", "resnet12").factory((3, 84, 84), 5)
    assert net.num_params > 12_000_000  # 64-160-320-640: about 12.4M


def _reference_conv4(net, flat, x, support_size=None):
    """One task's Conv4 forward written independently of the grouped layout: F.conv2d (with its
    bias), the plain-torch batch_norm on [1, N, C, H, W], ReLU, then pooling."""
    views = net.views(flat)
    for layer, p in zip(net.layers, views):
        if isinstance(layer, conv.ConvBlock):
            y = F.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
            y = batch_norm(y[None], p["bn.weight"], p["bn.bias"], support_size=support_size)[0]
            x = F.max_pool2d(torch.relu(y), 2)
        elif isinstance(layer, conv.Flatten):
            x = x.flatten(1)
        else:
            x = F.linear(x, p["weight"], p["bias"])
    return x


@pytest.mark.parametrize("chunk_bytes", [0, 1], ids=["one-chunk", "task-chunks"])
@pytest.mark.parametrize("fmt", ["channels_last", "contiguous_format"])
@pytest.mark.parametrize("transductive", [True, False], ids=["transductive", "support-stats"])
def test_second_order_maml_gradient_equals_independent_reference(transductive, fmt, chunk_bytes, monkeypatch):
    # the grouped layout, the fused batch norm with its own double backward, the dropped conv
    # bias, pool-before-ReLU and the task chunks, against a per-task loop that uses none of them
    monkeypatch.setattr(conv, "GROUPED_FORMAT", getattr(torch, fmt))
    net = conv4((1, 16, 16), 3, width=4, transductive=transductive)
    net.cpu_chunk_bytes = chunk_bytes  # 1 byte: one task per chunk
    g = torch.Generator().manual_seed(5)
    t, s, q = 3, 4, 6
    theta = net.init_flat(g, dtype=D).requires_grad_()
    with torch.no_grad():  # biases and scales away from their init, so that nothing cancels by chance
        theta += 0.1 * torch.randn(theta.shape, generator=g, dtype=D)
    xs, xq = torch.randn(t, s, 1, 16, 16, generator=g, dtype=D), torch.randn(t, q, 1, 16, 16, generator=g, dtype=D)
    ys, yq = torch.randint(0, 3, (t, s), generator=g), torch.randint(0, 3, (t, q), generator=g)
    lr = 0.3
    sup = None if transductive else s

    fast = theta.expand(t, -1)
    (gr,) = torch.autograd.grad(_ce(net(fast, xs, support_size=sup), ys).sum(), fast, create_graph=True)
    fast = fast - lr * gr
    both = torch.cat([xs, xq], 1)
    pred = net(fast, xq) if transductive else net(fast, both, support_size=s)[:, s:]
    (meta_batched,) = torch.autograd.grad(_ce(pred, yq).mean(), theta)

    meta_loop = torch.zeros_like(theta)
    for i in range(t):
        out = _reference_conv4(net, theta, xs[i], sup)
        (gi,) = torch.autograd.grad(F.cross_entropy(out, ys[i]), theta, create_graph=True)
        fi = theta - lr * gi
        pi = _reference_conv4(net, fi, xq[i]) if transductive else _reference_conv4(net, fi, both[i], s)[s:]
        (mi,) = torch.autograd.grad(F.cross_entropy(pi, yq[i]) / t, theta)
        meta_loop += mi
    assert meta_batched.abs().max() > 1e-6
    torch.testing.assert_close(meta_batched, meta_loop, rtol=1e-9, atol=1e-11)


def test_task_chunks_equal_one_chunk():
    net = resnet12((2, 16, 16), 3, widths=(3, 4, 5, 6))
    g = torch.Generator().manual_seed(7)
    flat = torch.stack([net.init_flat(g, dtype=D) for _ in range(5)])
    x = torch.randn(5, 4, 2, 16, 16, generator=g, dtype=D)
    whole = net(flat, x)
    net.cpu_chunk_bytes = 4 * 3 * 16 * 16 * 8 * 2  # two tasks per chunk: 2, 2, 1
    assert net.tasks_per_chunk(x) == 2
    torch.testing.assert_close(net(flat, x), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [4, 16])
@pytest.mark.parametrize("algo", ["maml", "fomaml"])
def test_learner_meta_gradient_on_conv4_equals_reference_loop(algo, width, monkeypatch):
    # the learner's own path (flat theta, task_step, first-order detaching, several inner steps,
    # the query forward through metareg.ops.bn_pool_relu, and at width 16 through
    # metareg.ops.conv3x3_winograd on the second block, where the extension is built) on Conv4,
    # against one task at a time through the independent reference forward
    from metareg import ops
    from metareg.learners import LearnerContext
    from metareg.plugins import get_registry
    from metareg.tasks import TaskBatch, TaskInfo

    shape, ways, steps, lr = (1, 16, 16), 3, 2, 0.3
    spec = get_registry().get("algorithm", algo)
    info = TaskInfo(input_shape=shape, output_dim=ways, loss="cross_entropy", metric="accuracy")
    net = conv4(shape, ways, width=width)
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: net, generator=torch.Generator().manual_seed(2),
                         device=torch.device("cpu"), dtype=D)
    learner = spec.factory(spec.config(inner_lr=lr, inner_steps=steps), ctx)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        learner.theta += 0.1 * torch.randn(learner.theta.shape, generator=g, dtype=D)
    t, s, q = 3, 3, 6
    batch = TaskBatch(torch.randn(t, s, *shape, generator=g, dtype=D), torch.randint(0, ways, (t, s), generator=g),
                      torch.randn(t, q, *shape, generator=g, dtype=D), torch.randint(0, ways, (t, q), generator=g))
    fused, real = [], ops.bn_pool_relu
    monkeypatch.setattr(ops, "bn_pool_relu", lambda *a: fused.append(1) or real(*a))
    winograd, real_w = [], ops.conv3x3_winograd
    monkeypatch.setattr(ops, "conv3x3_winograd", lambda *a: winograd.append(1) or real_w(*a))
    learner.zero_grad()
    learner.step(batch)
    got = learner.theta.grad.clone()
    assert len(fused) == (4 if ops._compiled("bn_pool_relu", learner.theta) else 0)  # the query's four blocks
    # the query's second block (8x8, 16 channels); the others are too small or have one channel
    assert len(winograd) == (1 if width == 16 and ops._compiled("conv3x3_winograd", learner.theta) else 0)

    theta = learner.theta.detach().clone().requires_grad_()
    want = torch.zeros_like(theta)
    for i in range(t):
        fast = theta
        for _ in range(steps):
            loss = F.cross_entropy(_reference_conv4(net, fast, batch.support_x[i]), batch.support_y[i])
            (gi,) = torch.autograd.grad(loss, fast, create_graph=algo == "maml")
            fast = fast - lr * (gi.detach() if algo == "fomaml" else gi)
        loss = F.cross_entropy(_reference_conv4(net, fast, batch.query_x[i]), batch.query_y[i]) / t
        want += torch.autograd.grad(loss, theta)[0]
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
