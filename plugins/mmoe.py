"""Multi-gate mixture of experts (MMoE).

Ma, Zhao, Yi, Chen, Hong, Chi. Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts. KDD 2018, eqs. (5)-(6):

    y_k = h^k(f^k(x)),   f^k(x) = sum_i g^k(x)_i f_i(x),   g^k(x) = softmax(W_gk x)

with E experts f_i (each the backbone's encoder), one linear softmax gate W_gk per task on the
flattened input, and the task's head (tower) h^k.

What is shared: the experts (``shared``, what gradient combiners see).  Gates and heads are
task-specific.  A new task's encoder is the experts mixed by the mean of the trained gates'
parameters (a gate halfway between the tasks'); with ``adapt_encoder`` the experts and that gate
are fine-tuned per new task.
"""

import math

import torch
from torch import nn

import metareg
from metareg import MultiTaskConfig, MultiTaskLearner
from metareg import run_columns


@metareg.config
class MMoEConfig(MultiTaskConfig):
    experts: int = metareg.param(4, "number of experts E (each a copy of the backbone's encoder)", ge=1)


@metareg.algorithm("mmoe", kind="multitask", family="architecture",
                   summary="E shared experts mixed per task by a softmax gate on the input",
                   paper="Ma et al. Modeling Task Relationships in Multi-task Learning with Multi-gate "
                         "Mixture-of-Experts. KDD 2018", config=MMoEConfig, requires={"fixed_tasks"})
class MMoE(MultiTaskLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        net, e, m = self.net, config.experts, self.num_train_tasks
        self.p_exp = net.head_offset
        self.d_in = math.prod(context.task.input_shape)
        g = context.generator
        experts = torch.stack([net.init_flat(g, dtype=context.dtype)[: self.p_exp] for _ in range(e)])
        self.shared = nn.Parameter(experts.reshape(-1).to(context.device))
        # zero gates: every task starts from the uniform mixture (no expert favoured before any data)
        self.gates = nn.Parameter(torch.zeros(m, e, self.d_in + 1, dtype=context.dtype, device=context.device))
        self.heads = self._init_heads(g)

    def gate(self, gates, x):
        """Softmax gate weights [T, N, E] of gates [T, E, D+1] on x [T, N, ...]; sums to 1 over E."""
        flat = x.flatten(2)
        logits = torch.baddbmm(gates[:, :, -1].unsqueeze(1), flat, gates[:, :, :-1].transpose(1, 2))
        return torch.softmax(logits, -1)

    def _mix(self, expert_out, weights):
        """expert outputs [T, E, N, F] and gate weights [T, N, E] -> [T, N, F] (eq. 6)."""
        return torch.einsum("tenf,tne->tnf", expert_out, weights)

    def features(self, x, task_ids):
        t, n = x.shape[:2]
        experts = self.shared.view(1, self.config.experts, self.p_exp)
        out = run_columns(self.net, experts, x.reshape(1, t * n, *x.shape[2:]), 0, self.net.head_from)
        per_task = out[0].view(self.config.experts, t, n, -1).transpose(0, 1)  # [T, E, N, F]
        return self._mix(per_task, self.gate(self.gates[task_ids], x))

    def new_task_encoder(self):
        return torch.cat([self.shared, self.gates.mean(0).reshape(-1)]).detach()

    def encode_new(self, enc, x):
        t, n = x.shape[:2]
        e = self.config.experts
        experts = enc[:, : e * self.p_exp].reshape(t, e, self.p_exp)
        gates = enc[:, e * self.p_exp:].reshape(t, e, self.d_in + 1)
        if enc.stride(0) == 0:
            out = run_columns(self.net, experts[:1], x.reshape(1, t * n, *x.shape[2:]), 0, self.net.head_from)
            out = out[0].view(e, t, n, -1).transpose(0, 1)
        else:
            out = run_columns(self.net, experts, x, 0, self.net.head_from)
        return self._mix(out, self.gate(gates, x))


@metareg.hookimpl
def register_algorithms(register):
    register(MMoE)
