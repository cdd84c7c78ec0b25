"""Shared by the combiner tests (imported by name: pytest puts this folder on sys.path)."""

import inspect

import torch

from metareg import plugins


def combiner_names():
    return [s.name for s in plugins.get_registry().list("algorithm", role="combiner")]


def make(name, num_tasks, **config):
    spec = plugins.get_registry().get("algorithm", name)
    return spec.factory(spec.config(**config), num_tasks=num_tasks)


def apply(combiner, jacobian, losses, task_ids=None):
    """What a learner hands the combiner: the Jacobian (gradient methods) or the losses."""
    if combiner.needs_jacobian:
        if "task_ids" in inspect.signature(combiner.aggregate).parameters:
            return combiner.aggregate(jacobian, losses, task_ids=task_ids)
        return combiner.aggregate(jacobian, losses)
    return combiner.loss(losses, task_ids)


def pcgrad_oracle(j, order):
    """Yu et al. 2020, Algorithm 1, written as the paper's loop over whole vectors."""
    out = []
    for i in range(j.shape[0]):
        g = j[i].clone()
        for k in order[i].tolist():
            dot = g @ j[k]
            if dot < 0:
                g = g - dot / (j[k] @ j[k]) * j[k]
        out.append(g)
    return torch.stack(out)
