"""The built-in comparison suites (``metareg compare --suite NAME``), registered through the same
hook a third-party package uses.

``paradigms``: one learner per family, so the paradigm question ("multi-task learning or
meta-learning, on the tasks I trained on and on new ones?") needs no algorithm names.  On an
episodic benchmark without fixed training tasks the suite runs its fixed-task form (``sinusoid``
-> ``sinusoid_mtl``, ``glyphs`` -> ``glyphs_mtl``, ``digits`` -> ``digits_mtl``): the same task
family, where a multi-task learner has tasks to train its heads on and every learner can be
scored on seen and on new tasks.
"""

import metareg

PARADIGMS = {
    "optimization": ["maml"],
    "metric": ["protonet", "family:metric"],  # classification only: empty on regression benchmarks
    "model": ["fast_weights", "cnp", "family:model"],
    "multitask (gradient combiner)": ["hard_sharing"],
    "hybrid": ["family:hybrid"],
}


@metareg.hookimpl
def register_suites(register):
    register(
        "paradigms",
        "one learner per family: MAML (optimization), ProtoNet (metric), fast weights or CNP (model-based), "
        "hard sharing with PCGrad (multi-task), a hybrid (multi-task pre-training, then MAML) where one is installed",
        PARADIGMS,
        benchmarks={"sinusoid": "sinusoid_mtl", "glyphs": "glyphs_mtl", "digits": "digits_mtl"},
        sets={"hard_sharing.combiner": "pcgrad"},
        # what `glyphs` suggests to MAML (its inner learning rate on images); glyphs_mtl does not say it.
        # The hybrid's pre-training is counted in steps: on images a budget reaches far fewer steps
        benchmark_sets={"glyphs_mtl": {"maml.inner_lr": 0.4, "hybrid.inner_lr": 0.4, "hybrid.pretrain_steps": 20}},
    )
