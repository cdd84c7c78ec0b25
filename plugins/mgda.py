"""Multi-task combiner ``mgda``: the multiple-gradient descent algorithm (min-norm point).

Sener, Koltun. Multi-Task Learning as Multi-Objective Optimization. NeurIPS 2018, eq. (3):
min_{alpha in simplex} || sum_i alpha_i g_i ||^2; the update is the min-norm point
sum_i alpha_i g_i of the convex hull of the task gradients, a common descent direction of all
tasks (or zero at a Pareto-stationary point).  Where the paper's Algorithm 2 runs Frank-Wolfe on
the Gram matrix, this solves the same [T, T] QP exactly with an active-set method
(metareg.nonneg_qp), which finishes in a handful of steps for any T.

"UB": the paper's MGDA-UB applies the solver to gradients w.r.t. the shared *representation*
(an upper bound that needs one backward pass).  A combiner is handed the Jacobian of the shared
*parameters*, so this is the exact MGDA of eq. (3), which the bound approximates; with a
Jacobian over features the same combiner is MGDA-UB.  The paper's optional gradient
normalisation (section 3.2 / appendix) is not applied.
"""

import torch

import metareg
from metareg import Combiner


@metareg.config
class MGDAConfig:
    pass


@metareg.combiner("mgda", family="gradient",
                  summary="min-norm point of the convex hull of the task gradients (common descent direction)",
                  paper="Sener, Koltun. Multi-Task Learning as Multi-Objective Optimization. NeurIPS 2018",
                  config=MGDAConfig)
class MGDA(Combiner):
    needs_jacobian = True

    def weights(self, g):
        """alpha [T] on the simplex minimising alpha' g alpha."""
        return metareg.nonneg_qp(g, torch.zeros(g.shape[0], dtype=g.dtype, device=g.device), simplex=True)

    def aggregate(self, jacobian, losses=None, task_ids=None):
        g, scale = metareg.normalized_gram(jacobian)
        if scale == 0:
            return jacobian.new_zeros(jacobian.shape[1])
        return self.weights(g).to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian


@metareg.hookimpl
def register_algorithms(register):
    register(MGDA)
