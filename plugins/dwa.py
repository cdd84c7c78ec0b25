"""Multi-task combiner ``dwa``: Dynamic Weight Average.

Liu, Johns, Davison. End-to-End Multi-Task Learning with Attention. CVPR 2019, eq. (7):
lambda_k(t) = K exp(w_k(t-1) / temp) / sum_i exp(w_i(t-1) / temp), with the loss-descent rate
w_k(t-1) = L_k(t-1) / L_k(t-2) of the epoch-average losses, and lambda_k = 1 for the first two
epochs.  The combiner does not see epochs, so it counts them itself: every ``epoch_steps`` calls
of :meth:`loss` (one per training step) close an epoch.  The objective is (1/T) sum_k lambda_k L_k
over the tasks of the batch: the paper's sum divided by T, so equal weights give ``equal``.
The running sums live in buffers, so a checkpoint resumes the schedule where it stopped.
"""

import torch

import metareg
from metareg import Combiner


@metareg.config
class DWAConfig:
    temperature: float = metareg.param(2.0, "softmax temperature T of eq. (7) (the paper uses 2)", gt=0)
    epoch_steps: int = metareg.param(100, "training steps averaged into one 'epoch' loss L_k(t)", ge=1)


@metareg.combiner("dwa", family="weighting",
                  summary="weights from the ratio of the last two epoch losses (softmax with temperature)",
                  paper="Liu, Johns, Davison. End-to-End Multi-Task Learning with Attention. CVPR 2019",
                  config=DWAConfig)
class DWA(Combiner):
    def __init__(self, config=None, num_tasks=None):
        super().__init__(config or DWAConfig(), num_tasks)
        if num_tasks is None:
            raise metareg.errors.ConfigError("dwa keeps loss averages per task: build it with num_tasks=M.")
        m = num_tasks
        self.register_buffer("weights", torch.ones(m, dtype=torch.float64))
        self.register_buffer("_sum", torch.zeros(m, dtype=torch.float64))
        self.register_buffer("_count", torch.zeros(m, dtype=torch.float64))
        # epoch averages L(t-1), L(t-2); NaN until that epoch has been seen
        self.register_buffer("_history", torch.full((2, m), float("nan"), dtype=torch.float64))
        self.register_buffer("_calls", torch.zeros((), dtype=torch.long))

    def _close_epoch(self):
        avg = torch.where(self._count > 0, self._sum / self._count.clamp_min(1), self._history[0])
        self._history[1] = self._history[0]
        self._history[0] = avg
        self._sum.zero_()
        self._count.zero_()
        prev, prev2 = self._history[0], self._history[1]
        known = torch.isfinite(prev) & torch.isfinite(prev2) & (prev2 > 0)
        if bool(known.any()):
            # tasks without two epochs of history count as neither speeding up nor slowing down
            rate = torch.where(known, prev / prev2.clamp_min(1e-300), 1.0)
            self.weights.copy_(len(rate) * torch.softmax(rate / self.config.temperature, 0))

    def loss(self, losses, task_ids=None):
        ids = self.task_index(losses.shape[0], task_ids, losses.device)
        calls = int(self._calls)
        if calls and calls % self.config.epoch_steps == 0:
            self._close_epoch()
        detached = losses.detach().to(self._sum.dtype)
        self._sum.index_add_(0, ids.to(self._sum.device), detached.to(self._sum.device))
        self._count.index_add_(0, ids.to(self._sum.device), torch.ones_like(detached).to(self._sum.device))
        self._calls += 1
        lam = self.weights[ids.to(self.weights.device)].to(device=losses.device, dtype=losses.dtype)
        return (lam * losses).mean()


@metareg.hookimpl
def register_algorithms(register):
    register(DWA)
