"""Few-shot image classification benchmarks: ``glyphs`` (embedded, generated from fonts),
``digits`` (scikit-learn's handwritten digits), ``omniglot`` and ``miniimagenet`` (read from a
folder)."""

import metareg
from metareg import Digits, DigitsConfig, MiniImageNet, MiniImageNetConfig, Omniglot, OmniglotConfig

OMNIGLOT = ("Lake, Salakhutdinov, Tenenbaum. Human-level concept learning through probabilistic program induction. "
            "Science 2015; split of Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016")
MINI = ("Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016; split of Ravi, Larochelle. "
        "Optimization as a Model for Few-Shot Learning. ICLR 2017")

digits = metareg.benchmark(
    "digits", summary="scikit-learn 8x8 handwritten digits at 28x28: digits 0-5 train, 6-9 test (ways <= 4)",
    config=DigitsConfig, provides={"episodic", "classification"}, metric="accuracy",
    algorithm_defaults={"inner_lr": 0.4},
    paper="Alpaydin, Kaynak. Optical Recognition of Handwritten Digits (UCI). 1998",
)(type("DigitsBenchmark", (Digits,), {"__module__": __name__}))

omniglot = metareg.benchmark(
    "omniglot", summary="Omniglot from data_dir/METAREG_DATA, 28x28, Vinyals split with rotations as classes",
    config=OmniglotConfig, provides={"episodic", "classification"}, metric="accuracy",
    algorithm_defaults={"inner_lr": 0.4}, paper=OMNIGLOT,
)(type("OmniglotBenchmark", (Omniglot,), {"__module__": __name__}))

miniimagenet = metareg.benchmark(
    "miniimagenet", summary="miniImageNet from data_dir/METAREG_DATA, 84x84 RGB, Ravi-Larochelle 64/16/20 split",
    config=MiniImageNetConfig, provides={"episodic", "classification"}, metric="accuracy",
    algorithm_defaults={"inner_lr": 0.4}, paper=MINI,
)(type("MiniImageNetBenchmark", (MiniImageNet,), {"__module__": __name__}))


@metareg.hookimpl
def register_benchmarks(register):
    register(digits)
    register(omniglot)
    register(miniimagenet)
