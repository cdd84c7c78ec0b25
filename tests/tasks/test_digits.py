import sys

import pytest
import torch

from metareg.errors import ConfigError
from metareg.tasks.digits import BACKGROUND_DIGITS, EVALUATION_DIGITS, Digits, DigitsConfig

pytest.importorskip("sklearn")


def test_digits_episodes_use_disjoint_digits():
    bench = Digits(DigitsConfig(meta_batch=4))
    assert bench.info.output_dim == 3 and bench.info.input_shape == (1, 28, 28)
    assert set(bench.pools["train"].class_names) == {str(d) for d in BACKGROUND_DIGITS}
    assert set(bench.pools["test"].class_names) == {str(d) for d in EVALUATION_DIGITS}
    b = bench.train_batch(torch.Generator().manual_seed(0))
    assert b.support_x.shape == (4, 3, 1, 28, 28) and b.query_x.shape == (4, 45, 1, 28, 28)
    assert b.support_x.max() <= 1 and b.support_x[..., :2, :].abs().max() == 0  # the padding stays empty
    # validation images are training digits never drawn for training
    tr, va = bench.pools["train"], bench.pools["val"]
    assert tr.images.shape[0] + va.images.shape[0] == 1797 - sum(int(c) for c in bench.pools["test"].counts)


def test_digits_has_only_four_evaluation_classes():
    with pytest.raises(ConfigError, match="ways"):
        DigitsConfig(ways=5)


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ConfigError, match=r"pip install metareg\[digits\]"):
        Digits(DigitsConfig())
