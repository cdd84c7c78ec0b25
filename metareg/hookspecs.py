"""The hooks a metareg plugin may implement.

A plugin is any module or object registered under the ``metareg`` entry-point group (built-ins
included: they load through exactly the same path as a third party's package).  It marks its
functions with :data:`metareg.hookimpl`; a function whose name matches no hook below is an error
(a misspelt ``register_algorithm`` would otherwise be silently ignored).

Registration hooks receive a ``register`` callback instead of returning lists, so the registry
knows which plugin registered what (shown by ``metareg list``) and can reject duplicates by
naming both plugins.  No hook is called at import time: the plugin manager calls them on first
use of the registry.
"""

from __future__ import annotations

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT", "hook_docs"]

PROJECT = "metareg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_algorithms(register):
    """Register learners and multi-task combiners.

    Call ``register(cls)`` for each class decorated with :func:`metareg.algorithm` (or
    :func:`metareg.combiner`); the decorator holds the spec (name, kind, family, summary, paper,
    config class), the call is what makes it visible.
    """


@hookspec
def register_benchmarks(register):
    """Register task distributions: ``register(cls)`` for classes decorated with
    :func:`metareg.benchmark`."""


@hookspec
def register_backbones(register):
    """Register task-batched networks: ``register(fn)`` for factories decorated with
    :func:`metareg.backbone`."""


@hookspec
def register_suites(register):
    """Register named comparison suites (``metareg compare --suite NAME``).

    ``register(name, description, slots, benchmarks=None, sets=None, benchmark_sets=None)``:
    ``slots`` maps a label (the family the slot stands for) to algorithm names in order of
    preference, ``"family:F"`` standing for every installed learner of family F; for a benchmark
    the first installed candidate that runs on it fills the slot, and an empty slot is reported,
    not an error.  ``benchmarks`` maps a benchmark asked for to the one the suite runs on (e.g.
    ``sinusoid`` -> ``sinusoid_mtl``, which also has fixed training tasks); ``sets`` are
    ``ALGO.key`` overrides applied when that algorithm is chosen, ``benchmark_sets`` the same per
    benchmark run on; the user's ``--set`` wins over both.  ``metareg list --suites`` lists them.
    """


@hookspec
def register_commands(cli):
    """Add click commands to the ``metareg`` command group ``cli`` (``cli.add_command(cmd)``)."""


@hookspec
def on_run_start(run):
    """A run is about to train.  ``run`` is the :class:`metareg.runner.Run` (config, learner,
    benchmark, output directory)."""


@hookspec
def on_step_end(run, step, metrics):
    """Outer step ``step`` (1-based) finished; ``metrics`` is a dict of floats (loss, and the
    evaluation metrics on steps where a periodic evaluation ran); multi-task learners add lists on
    some steps (``grad_cosine`` [T][T], ``grad_cosine_tasks`` [T], ``combiner.<state>`` [M])."""


@hookspec
def on_run_end(run, summary):
    """The run finished (or was interrupted: ``summary["status"]`` says which)."""


def hook_docs() -> dict[str, str]:
    """Each hook's name and the first sentence of its docstring (``metareg info``)."""
    import sys

    module = sys.modules[__name__]
    out = {}
    for name in dir(module):
        fn = getattr(module, name)
        if getattr(fn, PROJECT + "_spec", None) is not None:
            doc = " ".join((fn.__doc__ or "").split())
            out[name] = doc.split(". ")[0].rstrip(".") + "."
    return out

