"""Multi-task benchmarks (issue 5): ``gradnorm_toy``, ``relatedness``, ``digits_mtl``, ``glyphs_mtl``.

Each has M fixed training tasks with ids (``fixed_tasks``: a head each in a multi-task learner),
held-out tasks for the few-shot evaluation both paradigms share, and fresh samples of the trained
tasks for their in-distribution error (``train_tasks_<metric>`` in a run's summary).  Meta-learners
can train on all of them too (``episodic``: their batches are tasks of the training set).
"""

import metareg
from metareg import (
    DigitsMTL,
    DigitsMTLConfig,
    GlyphsMTL,
    GlyphsMTLConfig,
    GradNormToy,
    GradNormToyConfig,
    Relatedness,
    RelatednessConfig,
)


def _named(cls, name):
    return type(name, (cls,), {"__module__": __name__})


gradnorm_toy = metareg.benchmark(
    "gradnorm_toy", summary="T regression tasks sigma_i tanh((B + eps_i) x), x in R^250, task scales 1..100",
    config=GradNormToyConfig, provides={"episodic", "fixed_tasks"}, metric="mse",
    paper="Chen et al. GradNorm: Gradient Normalization for Adaptive Loss Balancing. ICML 2018, section 4",
)(_named(GradNormToy, "GradNormToyBenchmark"))

relatedness = metareg.benchmark(
    "relatedness", summary="regression tasks rho * shared + sqrt(1-rho^2) * private random networks; rho in [0, 1]",
    config=RelatednessConfig, provides={"episodic", "fixed_tasks"}, metric="mse",
    paper="in the spirit of the synthetic task-relatedness studies of Caruana 1997 and Ma et al. KDD 2018, section 4",
)(_named(Relatedness, "RelatednessBenchmark"))

digits_mtl = metareg.benchmark(
    "digits_mtl", summary="scikit-learn digits under 6 labelings (digit, parity, >4, mod 3, closed loop, prime); "
    "held-out: new 5-vs-5 digit splits",
    config=DigitsMTLConfig, provides={"episodic", "fixed_tasks", "classification"}, metric="accuracy",
    paper="Alpaydin, Kaynak. Optical Recognition of Handwritten Digits (UCI). 1998",
)(_named(DigitsMTL, "DigitsMTLBenchmark"))

glyphs_mtl = metareg.benchmark(
    "glyphs_mtl",
    summary="M fixed N-way problems over disjoint glyph classes; held-out: episodes of the evaluation groups",
    config=GlyphsMTLConfig, provides={"episodic", "fixed_tasks", "classification"}, metric="accuracy",
    paper="glyphs (metareg's embedded Omniglot-like set) as fixed tasks",
)(_named(GlyphsMTL, "GlyphsMTLBenchmark"))


@metareg.hookimpl
def register_benchmarks(register):
    register(gradnorm_toy)
    register(relatedness)
    register(digits_mtl)
    register(glyphs_mtl)
