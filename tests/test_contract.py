"""Contract tests generated from the registry: every registered learner, on every benchmark it
declares itself compatible with, must train, fill gradients, evaluate, leave its parameters alone
while adapting, and give the same numbers for the same seed; every benchmark, combiner and
backbone keeps its own contract.  A new plugin is checked for free.  The checks themselves live
in :mod:`metareg.contract`, which `metareg check-plugin DIST` runs on a third party's package."""

import pytest

from metareg import contract, plugins


def _registry_now():
    plugins.reset()
    reg = plugins.get_registry()
    cases = {
        "learners": [pytest.param(a, b, id=f"{a}-{b}") for a, b in contract.learner_cases()],
        "benchmarks": reg.names("benchmark"),
        "combiners": [s.name for s in reg.list("algorithm") if s.role == "combiner"],
        "backbones": reg.names("backbone"),
    }
    plugins.reset()
    return cases


CASES = _registry_now()


def _run(check, *args, **kw):
    try:
        check(*args, **kw)
    except contract.ContractSkip as e:
        pytest.skip(str(e))


def test_every_builtin_learner_has_a_case():
    names = {c.values[0] for c in CASES["learners"]}
    assert {"maml", "fomaml", "reptile", "meta_sgd", "anil", "hard_sharing", "protonet"} <= names


@pytest.mark.parametrize("algo,bench", CASES["learners"])
def test_learner_contract(algo, bench):
    _run(contract.check_learner, algo, bench)


@pytest.mark.parametrize("algo,bench", CASES["learners"])
def test_same_seed_same_numbers(algo, bench):
    _run(contract.check_same_seed, algo, bench)


@pytest.mark.parametrize("bench", CASES["benchmarks"])
def test_benchmark_contract(bench):
    _run(contract.check_benchmark, bench)


@pytest.mark.parametrize("name", CASES["combiners"])
def test_combiner_contract(name):
    _run(contract.check_combiner, name)


@pytest.mark.parametrize("name", CASES["backbones"])
def test_backbone_contract(name):
    _run(contract.check_backbone, name)


def test_a_broken_learner_fails_the_contract(monkeypatch):
    """The checks can fail: a learner whose step also moves its parameters is caught."""
    from metareg.runner import Run

    real_build = Run.build

    def build(self):
        real_build(self)
        step = self.learner.step

        def bad_step(batch):
            out = step(batch)
            for p in self.learner.parameters():
                p.data.add_(1.0)
            return out

        self.learner.step = bad_step

    monkeypatch.setattr(Run, "build", build)
    with pytest.raises(contract.ContractFailure, match="step\\(\\) changed"):
        contract.check_learner("maml", "sinusoid")
