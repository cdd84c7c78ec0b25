"""A third-party metareg plugin package: one of each thing a plugin can add, using only metareg's
public API.  The hooks below are what the entry point loads; the objects live in the modules."""

import metareg

from .backbones import narrow_mlp
from .benchmarks import Linear
from .combiner import RandomWeighting
from .learners import ClippedMAML, GatedSharing, NearestNeighbour
from .observer import on_run_end, on_run_start, on_step_end  # noqa: F401 - run-observer hooks


@metareg.hookimpl
def register_benchmarks(register):
    register(Linear)


@metareg.hookimpl
def register_algorithms(register):
    register(ClippedMAML)
    register(NearestNeighbour)
    register(GatedSharing)
    register(RandomWeighting)


@metareg.hookimpl
def register_backbones(register):
    register(narrow_mlp)
