"""iMAML: MAML with implicit meta-gradients.

Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients. NeurIPS 2019.
Inner problem (eq. 3/4): phi_t = argmin_phi L_t^support(phi) + lam/2 |phi - theta|^2, solved
approximately by ``inner_steps`` gradient steps from theta (no graph kept).  Meta-gradient
(Lemma 1, eq. 5/6): d L_t^query(phi_t) / d theta = (I + H_t / lam)^{-1} grad L_t^query(phi_t),
H_t the Hessian of L_t^support at phi_t, solved by ``cg_steps`` iterations of conjugate gradient
(section 3.1, Algorithm 2) using only Hessian-vector products; theta.grad = mean_t g_t.

Batched over the T tasks of a meta-batch: phi is one [T, P] buffer, every inner step one batched
forward and one fused update, and one autograd Hessian-vector product over the [T, P] buffer gives
all T products at once (task t's support loss reads row t only), so CG runs on T problems at once
with per-task step sizes; a task's CG stops at a direction of non-positive curvature (I + H/lam
is positive semi-definite at a minimiser of the proximal problem, not always after a few inner
steps; truncated CG as in Hessian-free optimisation).  Memory does not grow with ``inner_steps``: the only graph kept is one
support forward with its gradient (for the Hessian-vector products), plus the query forward.
Adaptation at test time solves the same proximal problem from theta.

``first_order=true`` skips CG (g_t = grad L_t^query(phi_t), the first-order approximation of the
paper's section 3).  Gradient combiners get the per-task g_t as the rows [T, P] they aggregate.  ``task_chunk`` runs
the meta-batch that many tasks at a time (same gradient, the memory of one chunk); on CPU,
``task_parallel`` (on by default) runs Conv4's and ResNet-12's own chunks of tasks on workers of one
thread each, as the MAML family does.
"""

import torch
from torch import Tensor

import metareg
from metareg import GradientMetaConfig, GradientMetaLearner

PAPER = "Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients. NeurIPS 2019"


@metareg.config
class IMAMLConfig(GradientMetaConfig):
    inner_lr: float = metareg.param(0.01, "step size of the gradient steps on the proximal inner problem", gt=0)
    inner_steps: int = metareg.param(5, "gradient steps on the proximal inner problem (memory does not grow with "
                                        "them: no graph is kept)", ge=1, le=10_000)
    lam: float = metareg.param(1.0, "proximal regularisation lambda: the inner problem is L_support(phi) + "
                                    "lam/2 |phi - theta|^2 (larger: phi stays closer to theta)", gt=0)
    cg_steps: int = metareg.param(5, "conjugate-gradient iterations for (I + H/lam)^{-1} grad L_query", ge=1, le=1000)
    first_order: bool = metareg.param(False, "skip conjugate gradient: the meta-gradient is grad L_query(phi)")
    recompute: bool = metareg.param(False, "no effect: iMAML keeps no inner-loop graph to recompute")


@metareg.algorithm("imaml", kind="meta", family="optimization",
                   summary="implicit MAML: proximal inner problem, meta-gradient by conjugate gradient",
                   paper=PAPER, config=IMAMLConfig, requires={"episodic"})
class IMAML(GradientMetaLearner):
    capabilities = frozenset({"second_order", "first_order", "fast_weights"})

    def __init__(self, config, context):
        super().__init__(config, context)
        self.meta_objective.require_rows("imaml", "implicit gradients")

    # -- the proximal inner problem ---------------------------------------------------------
    def inner_loop(self, fast, feats, y, steps, *, create_graph, lr=None, keep=()):
        """``steps`` gradient steps on L_support(phi) + lam/2 |phi - theta|^2 from ``fast`` =
        theta ([P_a] shared, or [T, P_a]); no graph is kept whatever ``create_graph`` says (the
        implicit meta-gradient does not differentiate through the steps).  Returns the final
        [T, P_a] and those after each step count in ``keep``."""
        lr = self.inner_lr() if lr is None else lr
        lam = self.config.lam
        anchor = fast.detach()
        t = feats.shape[0]
        phi, kept = anchor, {}
        feats = feats.detach()
        for k in range(1, steps + 1):
            p = phi if phi.dim() == 2 or self._vjp else phi.expand(t, -1)
            if not self._vjp:
                p = p.detach().requires_grad_()
            with torch.enable_grad():
                g = self.support_grad(p, feats, y, create_graph=False)
            if phi.dim() == 2:  # at the shared start phi = theta: the proximal term is zero
                g = g + lam * (phi - anchor)
            phi = self.inner_update(phi, g.detach(), lr).detach()
            if k in keep:
                kept[k] = phi
        if phi.dim() == 1:
            phi = phi.expand(t, -1)
        return phi, kept

    # -- the implicit meta-gradient ---------------------------------------------------------
    def implicit_grad(self, phi: Tensor, feats: Tensor, y: Tensor, b: Tensor) -> Tensor:
        """(I + H_t / lam)^{-1} b_t for every task t by ``cg_steps`` of conjugate gradient, H_t
        the Hessian of task t's support loss at ``phi`` [T, P_a]; ``b`` [T, P_a] -> [T, P_a].
        One graph of the support gradient serves every Hessian-vector product."""
        lam = self.config.lam
        with torch.enable_grad():
            p = phi.detach().requires_grad_()
            g = self.support_grad(p, feats.detach(), y, create_graph=True)

            def a_times(v: Tensor) -> Tensor:
                (hv,) = torch.autograd.grad(g, p, v, retain_graph=True)
                return v + hv / lam

            x = torch.zeros_like(b)
            r, d = b.clone(), b.clone()
            rr = (r * r).sum(1, keepdim=True)
            active = torch.ones_like(rr, dtype=torch.bool)
            for i in range(self.config.cg_steps):
                ad = a_times(d)
                dad = (d * ad).sum(1, keepdim=True)
                # a task stops at a direction of non-positive curvature (truncated CG, Steihaug
                # 1983): at a minimiser of the proximal problem I + H/lam is positive semi-definite,
                # but a few inner steps may stop where it is not, and CG there diverges; a residual
                # already zero (d = 0) stops it too (0/0)
                active = active & (dad > 0)
                if i == 0:
                    at_once = ~active  # no usable direction at all: the first-order g_t = b_t below
                alpha = torch.where(active, rr / torch.where(active, dad, 1), 0)
                x = x + alpha * d
                r = r - alpha * ad
                rr_new = (r * r).sum(1, keepdim=True)
                beta = torch.where(active & (rr != 0), rr_new / torch.where(rr != 0, rr, 1), 0)
                d = r + beta * d
                rr = rr_new
            x = torch.where(at_once, b, x)
        return x.detach()

    def task_gradients(self, theta: Tensor, batch) -> tuple[Tensor, Tensor]:
        """(per-task meta-gradients g_t [T, P], query losses [T]) of the tasks of ``batch``."""
        feats_s, feats_q = self.features(theta, batch.support_x, batch.query_x)
        phi, _ = self.inner_loop(self._adapted(theta), feats_s, batch.support_y, self.config.inner_steps,
                                 create_graph=False)
        with torch.enable_grad():
            phi_q = phi.detach().requires_grad_()
            query_losses = self.losses(self.predict_query(phi_q, feats_s, feats_q), batch.query_y)
            (g_query,) = torch.autograd.grad(query_losses.sum(), phi_q)  # row t: grad L_t^query(phi_t)
        if self.config.first_order:
            return g_query, query_losses.detach()
        return self.implicit_grad(phi, feats_s, batch.support_y, g_query), query_losses.detach()

    def step(self, batch):
        mo = self.meta_objective
        theta = self.theta.detach()
        # the tasks are independent: task_chunk bounds the memory of one pass, and task_parallel
        # runs the backbone's chunks on workers of one thread each (metareg.in_order)
        chunk = self.config.task_chunk or self._parallel_chunk(batch) or batch.num_tasks
        self.step_workers = self._task_workers(batch) if chunk < batch.num_tasks else 1
        parts = metareg.in_order(lambda i: self.task_gradients(theta, batch.slice(i, i + chunk)),
                                 range(0, batch.num_tasks, chunk), self.step_workers)
        rows, query_losses = (torch.cat(x) for x in zip(*parts))
        out = {}
        if mo.needs_jacobian:
            self.theta.grad, out = mo.aggregate(rows, query_losses, batch.task_ids)
        else:
            self.theta.grad = rows.mean(0)
        if mo.adversarial:
            feats_s, feats_q = self.features(self.theta, batch.support_x, batch.query_x)
            extra, adv = mo.adversarial_loss(self.encoder_features(self.theta, batch, feats_s, feats_q), batch.task_ids)
            extra.backward()  # adds to theta.grad and fills the discriminator's
            out.update(adv)
        return {"loss": query_losses.mean().item(), **out}


@metareg.hookimpl
def register_algorithms(register):
    register(IMAML)
