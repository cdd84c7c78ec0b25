import pytest
import torch

from metareg import plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    """Each test sees a freshly loaded plugin manager and no plugin env switches from outside."""
    monkeypatch.delenv("METAREG_PLUGINS", raising=False)
    monkeypatch.delenv("METAREG_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def registry():
    return plugins.get_registry()


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
