import types

import pytest
import torch

import metareg
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


@metareg.config
class BlobsConfig:
    ways: int = metareg.param(3, "classes per task", ge=2)
    shots: int = metareg.param(2, "support examples per class", ge=1)
    query: int = metareg.param(4, "query examples per class", ge=1)
    meta_batch: int = metareg.param(4, "tasks per batch", ge=1)
    eval_query: int = metareg.param(4, "query examples per class at evaluation", ge=1)
    dim: int = metareg.param(8, "input dimension", ge=1)
    hidden: int = metareg.param(32, "width of the two hidden layers of the default mlp", ge=1)
    num_ids: int = metareg.param(0, "training tasks carry one of this many ids (0: no ids)", ge=0)


@metareg.benchmark("blobs", summary="Gaussian blobs", config=BlobsConfig, provides={"episodic", "classification"},
                   metric="accuracy")
class Blobs(metareg.TaskDistribution):
    """A small synthetic classification family for the learner tests: each class a Gaussian blob."""

    def __init__(self, config):
        super().__init__(config)
        self.info = metareg.TaskInfo(input_shape=(config.dim,), output_dim=config.ways, loss="cross_entropy",
                                     metric="accuracy", num_train_tasks=config.num_ids or None,
                                     backbone_options=(("hidden", (config.hidden, config.hidden)),))

    def _tasks(self, t, query, g, ids=None):
        c = self.config
        centers = torch.randn(t, c.ways, 1, c.dim, generator=g) * 2.0
        n = c.shots + query
        x = centers + torch.randn(t, c.ways, n, c.dim, generator=g)
        y = torch.arange(c.ways).view(1, c.ways, 1).expand(t, c.ways, n)
        s = c.shots
        flat = lambda a: a.reshape(t, -1, *a.shape[3:])  # noqa: E731
        return metareg.TaskBatch(flat(x[:, :, :s]), flat(y[:, :, :s]), flat(x[:, :, s:]), flat(y[:, :, s:]), ids)

    def train_batch(self, generator):
        c = self.config
        ids = torch.randint(c.num_ids, (c.meta_batch,), generator=generator) if c.num_ids else None
        return self._tasks(c.meta_batch, c.query, generator, ids)

    def eval_batch(self, generator, num_tasks, split="test"):
        return self._tasks(num_tasks, self.config.eval_query, generator)


@pytest.fixture
def blobs_manager():
    """The installed plugins plus the `blobs` benchmark (Gaussian blobs)."""
    @metareg.hookimpl
    def register_benchmarks(register):
        register(Blobs)

    m = plugins.PluginManager()
    m.load_entry_points()
    m.add(types.SimpleNamespace(register_benchmarks=register_benchmarks), name="blobs_plugin")
    return m


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
