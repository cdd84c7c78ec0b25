"""Conv4 / ResNet-12: the task-batched forward equals a per-task loop, second-order MAML gradients
through the grouped convolutions and the hand-written batch norm equal the loop's, and the batch
norm itself passes gradcheck and gradgradcheck."""

import pytest
import torch
import torch.nn.functional as F

from metareg.errors import ConfigError
from metareg.nets import conv
from metareg.nets.conv import batch_norm, conv4, resnet12

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


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("support_size", [None, 2])
def test_batch_norm_gradcheck_and_gradgradcheck(batched, support_size):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=D, requires_grad=True)
    shape = (2, 2) if batched else (2,)
    w = (1 + 0.5 * torch.randn(shape, generator=g, dtype=D)).requires_grad_()
    b = torch.randn(shape, generator=g, dtype=D, requires_grad=True)
    fn = lambda x, w, b: batch_norm(x, w, b, support_size=support_size)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_batch_norm_matches_torch_training_mode_per_task():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 6, 6, generator=g, dtype=D)
    w, b = torch.randn(5, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
    ours = batch_norm(x, w, b)
    for i in range(3):
        ref = F.batch_norm(x[i], None, None, w, b, training=True, eps=1e-5)
        torch.testing.assert_close(ours[i], ref)


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
