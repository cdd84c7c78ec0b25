"""Sinusoid regression benchmarks: ``sinusoid`` (episodic, Finn et al. 2017 section 5.1) and
``sinusoid_mtl`` (M fixed training sinusoids with a head each, evaluated on new sinusoids)."""

import metareg
from metareg import Sinusoid, SinusoidConfig, SinusoidMTL, SinusoidMTLConfig

PAPER = "Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017"

sinusoid = metareg.benchmark(
    "sinusoid", summary="y = A sin(x - phi), A~U[0.1,5], phi~U[0,pi]; fresh tasks every meta-batch",
    config=SinusoidConfig, provides={"episodic"}, metric="mse", paper=PAPER,
)(type("SinusoidBenchmark", (Sinusoid,), {"__module__": __name__}))

sinusoid_mtl = metareg.benchmark(
    "sinusoid_mtl", summary="M fixed training sinusoids (a head each) + held-out sinusoids for few-shot evaluation",
    config=SinusoidMTLConfig, provides={"episodic", "fixed_tasks"}, metric="mse", paper=PAPER,
)(type("SinusoidMTLBenchmark", (SinusoidMTL,), {"__module__": __name__}))


@metareg.hookimpl
def register_benchmarks(register):
    register(sinusoid)
    register(sinusoid_mtl)
