"""Multi-task combiner ``mgda``: the multiple-gradient descent algorithm (min-norm point).

Sener, Koltun. Multi-Task Learning as Multi-Objective Optimization. NeurIPS 2018, eq. (3):
min_{alpha in simplex} || sum_i alpha_i g_i ||^2; the update is the min-norm point
sum_i alpha_i g_i of the convex hull of the task gradients, a common descent direction of all
tasks (or zero at a Pareto-stationary point).  Where the paper's Algorithm 2 runs Frank-Wolfe on
the Gram matrix, this solves the same [T, T] QP exactly with an active-set method
(metareg.nonneg_qp), which finishes in a handful of steps for any T and, since it works on the
cosine matrix D^-1/2 G D^-1/2, stays exact when the gradients differ in norm by 1e6 (the optimum
then mixes in the large gradients with weights ~1e-12, which a regulariser or tolerance fixed
relative to G's largest diagonal would erase).

"UB": the paper's MGDA-UB applies the solver to gradients w.r.t. the shared *representation*
(an upper bound that needs one backward pass).  A combiner is handed the Jacobian of the shared
*parameters*, so this is the exact MGDA of eq. (3), which the bound approximates; with a
Jacobian over features the same combiner is MGDA-UB.  The paper's optional gradient
normalisation (section 3.2 / appendix) is not applied.
"""

import torch

import metareg
from metareg import GramCombiner


@metareg.config
class MGDAConfig:
    pass


@metareg.combiner("mgda", family="gradient",
                  summary="min-norm point of the convex hull of the task gradients (common descent direction)",
                  paper="Sener, Koltun. Multi-Task Learning as Multi-Objective Optimization. NeurIPS 2018",
                  config=MGDAConfig)
class MGDA(GramCombiner):
    def weights(self, gram, scale, task_ids=None):
        """alpha [T] on the simplex minimising alpha' G alpha."""
        zero = (gram.diagonal() <= 0).nonzero()
        if len(zero):  # a zero gradient is in the hull: the min-norm point is 0
            return torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device).index_fill_(0, zero[0], 1.0)
        return metareg.nonneg_qp(gram, torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device), simplex=True)


@metareg.hookimpl
def register_algorithms(register):
    register(MGDA)
