"""Multi-task combiner ``upgrad``: unconflicting projection of gradients.

Quinton, Rey. Jacobian Descent for Multi-Objective Optimization. 2024 (torchjd), section 4 /
eq. (6): A_UPGrad(J) = (1/T) sum_i pi_J(g_i), where pi_J projects onto the dual cone
{x : J x >= 0} of the rows of J.  Their Proposition 3 turns each projection into a [T, T] problem:
pi_J(J' u) = J' w with w = argmin_{v >= u} v' G v.  With u = e_i and v = e_i + x that is the
non-negative QP min_{x >= 0} 1/2 x' G x + (G e_i)' x, solved for all i at once by the active-set
method of metareg.nonneg_qp; the update is (1/T) sum_i (e_i + x_i) @ J.

The KKT conditions of those QPs are G w_i >= 0, i.e. each projection has a non-negative inner
product with every task gradient, and hence so has their mean: the update conflicts with no task.
Solving them exactly (not by a fixed number of first-order steps) is what keeps that true to
rounding.  The dual cone does not change when a row of J is rescaled, and nonneg_qp solves the
QPs on the cosine matrix D^-1/2 G D^-1/2 with a regulariser of 1e-12 on its unit diagonal (each
task relative to its own norm; torchjd: 1e-4 of G's normalised form), so the update conflicts
with no task even when task-gradient norms differ by 1e6.  (Regularising and stopping relative
to G's largest diagonal, the update conflicted with a task 1e4 times smaller than the largest.)
"""

import torch

import metareg
from metareg import GramCombiner


@metareg.config
class UPGradConfig:
    pass


@metareg.combiner("upgrad", family="gradient",
                  summary="mean of the task gradients, each projected onto the dual cone of all of them",
                  paper="Quinton, Rey. Jacobian Descent for Multi-Objective Optimization. 2024", config=UPGradConfig)
class UPGrad(GramCombiner):
    def weights(self, gram, scale, task_ids=None):
        t = gram.shape[0]
        eye = torch.eye(t, dtype=gram.dtype, device=gram.device)
        if not bool((gram < 0).any()):
            return eye.mean(0)  # every g_i already lies in the dual cone
        x = metareg.nonneg_qp(gram, gram)  # row i: c = G e_i (G is symmetric)
        return (eye + x).mean(0)


@metareg.hookimpl
def register_algorithms(register):
    register(UPGrad)
