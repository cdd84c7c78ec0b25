import pytest
import torch

from metareg import plugins


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Generated datasets go to a per-session folder, never the user's ~/.cache."""
    import os

    old = os.environ.get("METAREG_CACHE")
    os.environ["METAREG_CACHE"] = str(tmp_path_factory.mktemp("metareg-cache"))
    yield
    if old is None:
        os.environ.pop("METAREG_CACHE", None)
    else:
        os.environ["METAREG_CACHE"] = old


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


# Property tests draw the same examples on every run by default, so CI is reproducible; set
# HYPOTHESIS_PROFILE=explore to search with fresh random examples (do that before changing a combiner).
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("default", derandomize=True)
_hsettings.register_profile("explore", derandomize=False)
import os as _os  # noqa: E402

_hsettings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "default"))
