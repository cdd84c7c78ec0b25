"""Multi-task combiner ``pcgrad``: projecting conflicting gradients.

Yu, Kumar, Gupta, Levine, Hausman, Finn. Gradient Surgery for Multi-Task Learning. NeurIPS 2020,
Algorithm 1 (eq. 1): for each task i, visit the other tasks j in a random order and, whenever the
running g_i^PC conflicts with g_j (g_i^PC . g_j < 0), remove that component:
g_i^PC <- g_i^PC - (g_i^PC . g_j / |g_j|^2) g_j.  The update is the mean of the g_i^PC (the paper
sums them; the mean keeps ``equal``'s scale, so learning rates carry over).

Every g_i^PC is a combination sum_k C_ik g_k of the original gradients, and the algorithm only
ever needs inner products, so it runs on the [T, T] coefficients C and the Gram matrix:
g_i^PC . g_j = (C G)_ij.  The cost is one pass over J for G (through metareg.ops.pairwise_cosine,
which also finds the conflicts: no negative cosine means no projection and the plain mean) and
one pass for the update, and the T sequential projections of all tasks run as T-1 batched steps.
The random order comes from the combiner's own generator, seeded from its config, so a run is
reproducible; it is why the result depends on the order of the rows (``order_invariant = False``).
"""

import numpy as np
import torch

import metareg
from metareg import SeededGramCombiner


@metareg.config
class PCGradConfig:
    seed: int = metareg.param(0, "seed of the random projection order")


@metareg.combiner("pcgrad", family="gradient",
                  summary="project each task gradient off the normal plane of the gradients it conflicts with",
                  paper="Yu et al. Gradient Surgery for Multi-Task Learning. NeurIPS 2020", config=PCGradConfig)
class PCGrad(SeededGramCombiner):
    order_invariant = False
    cosine_gram = True

    def __init__(self, config=None, num_tasks=None):
        super().__init__(config or PCGradConfig(), num_tasks)

    def projection_order(self, t):
        """The [T, T-1] visiting order of the next call (advances the generator)."""
        return metareg.projection_orders(t, self.generator)

    def coefficients(self, g, order):
        """C [T, T] with g_i^PC = C[i] @ J, from the (scaled) Gram matrix g and the visiting order
        ([T, T] arithmetic in numpy: torch's per-op cost would rival a pass over J)."""
        gn = g.detach().cpu().numpy()
        t = gn.shape[0]
        order = order.cpu().numpy()
        coef = np.eye(t, dtype=gn.dtype)
        rows = np.arange(t)
        sq = np.diagonal(gn)
        for k in range(t - 1):
            j = order[:, k]
            dot = (coef @ gn)[rows, j]
            hit = (dot < 0) & (sq[j] > 0)
            coef[rows, j] -= np.where(hit, dot / np.maximum(sq[j], 1e-300), 0.0)
        return torch.from_numpy(coef).to(g.device)

    def weights(self, gram, scale, task_ids=None):
        order = self.projection_order(gram.shape[0])  # drawn every step, conflicts or not
        if not bool((gram < 0).any()):
            return torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=gram.dtype, device=gram.device)
        return self.coefficients(gram, order).mean(0)


@metareg.hookimpl
def register_algorithms(register):
    register(PCGrad)
