import torch

from metareg.runner import Run


def _run(overrides=None):
    r = Run("hard_sharing", "sinusoid_mtl", {"dtype": "float64", **(overrides or {})})
    r.build()
    return r


def test_heads_get_only_their_own_task_gradient():
    r = _run({"benchmark.meta_batch": 3})
    learner = r.learner
    batch = r.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", torch.float64)
    learner.step(batch)
    used = set(batch.task_ids.tolist())
    for m in range(learner.heads.shape[0]):
        nonzero = bool(learner.heads.grad[m].abs().sum() > 0)
        assert nonzero == (m in used)
    assert learner.shared.grad.abs().sum() > 0


def test_ridge_head_is_the_least_squares_solution_towards_the_mean_head():
    r = _run({"ridge": 1e-3})
    learner = r.learner
    batch = r.bench.eval_batch(torch.Generator().manual_seed(0), 2).to("cpu", torch.float64)
    preds = learner.adapt_predict(batch, [0, 1])
    feats = learner.encode(learner.shared, batch.support_x)
    mean_head = learner.heads.mean(0)
    torch.testing.assert_close(preds[0], learner.head(mean_head, learner.encode(learner.shared, batch.query_x)))
    # the fitted head must be stationary for the regularised objective: gradient ~ 0
    fitted = learner._ridge(feats, batch.support_y, mean_head).requires_grad_()
    obj = ((learner.head(fitted, feats) - batch.support_y) ** 2).sum() + 1e-3 * ((fitted - mean_head) ** 2).sum()
    (g,) = torch.autograd.grad(obj, fitted)
    assert g.abs().max() < 1e-8


def test_sgd_head_fit_improves_support_fit():
    r = _run({"head_fit": "sgd", "adapt_lr": 0.05})
    batch = r.bench.eval_batch(torch.Generator().manual_seed(0), 8).to("cpu", torch.float64)
    # score on the support set itself: k SGD steps on it must lower its loss
    batch.query_x, batch.query_y = batch.support_x, batch.support_y
    preds = r.learner.adapt_predict(batch, [0, 5])
    err = {k: ((p - batch.support_y) ** 2).mean() for k, p in preds.items()}
    assert err[5] < err[0]
