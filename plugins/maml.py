"""MAML and first-order MAML.

Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017.
Inner update (eq. 1): theta'_t = theta - alpha * grad L_t^support(theta); meta-objective (eq. 2/3):
min_theta sum_t L_t^query(theta'_t), differentiated through the inner update (second order).
First-order MAML (section 5.2) treats grad L^support as a constant.

On images, give first-order MAML several inner steps: with one step of lr 0.4 it learns far more
slowly than MAML at budgets of minutes (glyphs 5-way 1-shot, 1,200 x 8 tasks: 0.678 against
0.924); with five steps of lr 0.1 (the paper's 20-way Omniglot setting) the two are level at the
same budget (0.931 against 0.932) and FOMAML's step costs under half of MAML's
(benchmarks/RESULTS.md, "FOMAML against MAML").
"""

import metareg
from metareg import GradientMetaConfig, GradientMetaLearner

PAPER = "Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017"


@metareg.config
class MAMLConfig(GradientMetaConfig):
    pass


@metareg.config
class FOMAMLConfig(GradientMetaConfig):
    first_order: bool = metareg.param(True, "drop second-order terms (always true for fomaml)")
    inner_steps: int = metareg.param(1, "inner-loop gradient steps during meta-training (on images use several, "
                                        "e.g. 5 with inner_lr=0.1: one step learns far more slowly than MAML)", ge=1)


@metareg.algorithm("maml", kind="meta", family="optimization", summary="second-order MAML over batched fast weights",
                   paper=PAPER, config=MAMLConfig, requires={"episodic"}, presets={"fo": {"first_order": True}})
class MAML(GradientMetaLearner):
    pass


@metareg.algorithm("fomaml", kind="meta", family="optimization", summary="first-order MAML (no second derivatives)",
                   paper=PAPER + ", section 5.2", config=FOMAMLConfig, requires={"episodic"})
class FOMAML(GradientMetaLearner):
    capabilities = frozenset({"first_order", "fast_weights"})


@metareg.hookimpl
def register_algorithms(register):
    register(MAML)
    register(FOMAML)
