"""GradNorm on a tiny version of its own toy problem (Chen et al. 2018, section 4): targets
sigma_i tanh((B + eps_i) x) whose scales sigma_i differ by 100x, a shared MLP and linear heads,
trained through the combiner API (task Jacobian -> aggregate) without the runner."""

import torch
from combiner_util import make

import metareg


def toy_losses(seed=0, d_in=10, d_out=4, hidden=32, n=64):
    """(losses(shared, heads) -> [T], shared [P], heads) for sigma = (1, 100)."""
    g = torch.Generator().manual_seed(seed)
    sigmas = torch.tensor([1.0, 100.0])
    t = len(sigmas)
    # paper: B ~ N(0, 10), eps_i ~ N(0, 3.5), shared by all examples of a task
    b = torch.randn(d_out, d_in, generator=g) * 10 ** 0.5
    eps = torch.randn(t, d_out, d_in, generator=g) * 3.5 ** 0.5
    x = torch.randn(n, d_in, generator=g)
    y = sigmas[:, None, None] * torch.tanh(torch.einsum("toi,ni->tno", b + eps, x) / d_in ** 0.5)
    k = hidden * d_in
    shared = torch.cat([torch.randn(k, generator=g) / d_in ** 0.5,
                        torch.randn(hidden * hidden, generator=g) / hidden ** 0.5]).requires_grad_()
    heads = (torch.randn(t, d_out, hidden, generator=g) / hidden ** 0.5).requires_grad_()

    def losses(shared, heads):
        w1, w2 = shared[:k].view(hidden, d_in), shared[k:].view(hidden, hidden)
        feats = torch.relu(torch.relu(x @ w1.T) @ w2.T)
        pred = torch.einsum("nh,toh->tno", feats, heads)
        return ((pred - y) ** 2).mean((1, 2))

    return losses, shared, heads


def test_gradnorm_weights_balance_task_scales():
    c = make("gradnorm", 2, alpha=0.12)  # the paper's alpha for this toy
    losses_fn, shared, heads = toy_losses()
    opt = torch.optim.Adam([shared, heads], lr=1e-3)
    for _ in range(200):
        losses = losses_fn(shared, heads)
        opt.zero_grad()
        shared.grad = c.aggregate(metareg.task_jacobian(losses, shared), losses.detach())
        losses.sum().backward(inputs=[heads])
        opt.step()
    w_small, w_large = c.weights.tolist()
    norms = metareg.task_jacobian(losses_fn(shared, heads), shared).norm(dim=1)
    raw = float(norms[1] / norms[0])
    weighted = raw * w_large / w_small
    # the 100x task's gradient is >100x larger; GradNorm shrinks its weight relative to the
    # small task's until the weighted gradient norms are of one order (r_i^alpha ~ 1)
    assert raw > 100
    assert w_large / w_small < 0.05, (w_small, w_large)
    assert 0.1 < weighted < 10, (raw, w_small, w_large)
    assert abs(w_small + w_large - 2) < 1e-6  # the paper's normalisation sum_i w_i = T
