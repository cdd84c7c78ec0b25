"""Cross-stitch networks: one network (column) per task, joined by cross-stitch units.

Misra, Shrivastava, Gupta, Hebert. Cross-stitch Networks for Multi-task Learning. CVPR 2016,
eq. (1): after a hidden layer, the activations x^1..x^M of the M columns are replaced by their
linear combinations  x~^i = sum_j alpha_ij x^j.  Here one unit sits before every parametrised
layer after the first (after each hidden layer: after each ReLU of an MLP, after each block of a
Conv4), with one scalar alpha_ij per task pair and unit (the paper's "one alpha per pair", not per
channel), initialised as the paper does near the identity: alpha_ii = alpha_self, the rest
(1 - alpha_self) / (M - 1), so each row sums to 1.

What is shared: through the units, task i's loss depends on every column, so the columns' encoder
layers AND the alphas receive gradients from several tasks; they form ``shared`` (what gradient
combiners see).  Only the heads (each column's last layer) are task-specific.

A new task: the M columns run unchanged and its features are the mean of their last mixed
features (a new cross-stitch row of 1/M at the last unit); a fresh head is fitted on them.  With
``adapt_encoder`` the whole cross-stitch network (columns and alphas) is fine-tuned per new task.
"""

import torch
from torch import nn

import metareg
from metareg import MultiTaskConfig, MultiTaskLearner
from metareg import pick_columns


@metareg.config
class CrossStitchConfig(MultiTaskConfig):
    alpha_self: float = metareg.param(0.9, "initial alpha_ii of every unit (the rest share 1 - alpha_self)", ge=0, le=1)


@metareg.algorithm("cross_stitch", kind="multitask", family="architecture",
                   summary="a network per task, mixed by learned cross-stitch units after each hidden layer",
                   paper="Misra et al. Cross-stitch Networks for Multi-task Learning. CVPR 2016",
                   config=CrossStitchConfig, requires={"fixed_tasks"})
class CrossStitch(MultiTaskLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        net, m = self.net, self.num_train_tasks
        with_params = [i for i, layer in enumerate(net.layers[: net.head_from + 1]) if layer.shapes]
        # segment boundaries: a unit mixes the columns before every parametrised layer but the first
        self.bounds = [0, *with_params[1:]]
        self.units = len(self.bounds) - 1
        if self.units == 0:
            raise metareg.errors.IncompatibleError(
                "cross_stitch mixes hidden layers, but this backbone has none before its head; use a deeper backbone "
                "(e.g. mlp with hidden=(40, 40)).")
        self.p_col = net.head_offset
        g = context.generator
        cols = net.init_flat(g, dtype=context.dtype)[: self.p_col]
        # one initialisation for every column (as the paper starts all columns from one pretrained
        # network); the columns diverge through their tasks' gradients
        cols = cols.repeat(m)
        off = (1 - config.alpha_self) / (m - 1) if m > 1 else 0.0
        alpha = torch.full((self.units, m, m), off, dtype=context.dtype)
        alpha += (config.alpha_self - off) * torch.eye(m, dtype=context.dtype)
        self.shared = nn.Parameter(torch.cat([cols, alpha.reshape(-1)]).to(context.device))
        self.heads = self._init_heads(g)

    def _split(self, enc):
        """enc [B, P_s] -> columns [B, M, P_col], alphas [B, U, M, M]."""
        b, m = enc.shape[0], self.num_train_tasks
        cols = enc[:, : m * self.p_col].reshape(b, m, self.p_col)
        return cols, enc[:, m * self.p_col:].reshape(b, self.units, m, m)

    def column_features(self, enc, x):
        """Last mixed features [B, M, N, F] of every column for x [B, N, ...] (enc [B, P_s])."""
        net = self.net
        cols, alpha = self._split(enc)
        b, m = cols.shape[:2]
        h = x.unsqueeze(1).expand(b, m, *x.shape[1:]).reshape(b * m, *x.shape[1:])
        for u, (lo, hi) in enumerate(zip(self.bounds[:-1], self.bounds[1:])):
            seg = cols[..., net.offset(lo): net.offset(hi)].reshape(b * m, -1)
            h = net.forward(seg, h, lo, hi)
            shape = h.shape
            mixed = alpha[:, u] @ h.reshape(b, m, -1)  # eq. (1): x~^i = sum_j alpha_ij x^j
            h = mixed.reshape(shape)
        return h.view(b, m, *h.shape[1:])

    def features(self, x, task_ids):
        t, n = x.shape[:2]
        out = self.column_features(self.shared.unsqueeze(0), x.reshape(1, t * n, *x.shape[2:]))
        return pick_columns(out, task_ids)

    def new_task_encoder(self):
        return self.shared.detach()

    def encode_new(self, enc, x):
        t, n = x.shape[:2]
        if enc.stride(0) == 0:  # one frozen network for every new task: run it once on all examples
            out = self.column_features(enc[:1], x.reshape(1, t * n, *x.shape[2:]))
            return out.mean(1).view(t, n, *out.shape[3:])
        return self.column_features(enc, x).mean(1)


@metareg.hookimpl
def register_algorithms(register):
    register(CrossStitch)
