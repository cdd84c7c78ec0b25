"""The plugin system: entry points, isolation of broken plugins, duplicates, misspelt hooks."""

import subprocess
import sys
import types

import pytest

import metareg
from metareg import plugins
from metareg.errors import DuplicateNameError, PluginError, UnknownNameError

BUILTIN_ALGOS = {"maml", "fomaml", "reptile", "meta_sgd", "anil", "hard_sharing"}


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _algo_plugin(modname, algo_name):
    @metareg.config
    class C:
        pass

    @metareg.algorithm(algo_name, kind="meta", family="optimization", summary="s", paper="p", config=C)
    class A(metareg.GradientMetaLearner):
        pass

    @metareg.hookimpl
    def register_algorithms(register):
        register(A)

    return _module(modname, register_algorithms=register_algorithms)


def test_builtins_load_through_entry_points(registry):
    names = set(registry.names("algorithm"))
    assert BUILTIN_ALGOS <= names
    assert {"sinusoid", "sinusoid_mtl"} <= set(registry.names("benchmark"))
    spec = registry.get("algorithm", "maml")
    assert spec.plugin == "maml" and spec.package == "metareg"
    m = plugins.get_manager()
    assert m.failures == []
    assert "register_algorithms" in m.plugins["maml"].hooks


def test_import_runs_no_hook():
    code = "import metareg, metareg.cli, metareg.runner; from metareg import plugins; print(plugins._MANAGER is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_decorator_alone_registers_nothing(registry):
    _algo_plugin("never_registered", "ghost_algo")
    assert "ghost_algo" not in registry.names("algorithm")


def test_duplicate_names_are_an_error_naming_both():
    m = plugins.PluginManager()
    m.add(_algo_plugin("pkg_one", "twin"), name="one", package="pkg-one")
    m.add(_algo_plugin("pkg_two", "twin"), name="two", package="pkg-two")
    reg = m.registry
    assert any("twin" in f.cause and "pkg-one" in f.cause and "pkg-two" in f.cause for f in m.failures)
    with pytest.raises(DuplicateNameError) as e:
        reg.get("algorithm", "twin")
    assert "one" in str(e.value) and "two" in str(e.value)


def test_misspelt_hook_is_reported_and_others_still_load():
    @metareg.hookimpl
    def register_algorithm(register):  # missing "s"
        pass

    m = plugins.PluginManager()
    assert not m.add(_module("typo", register_algorithm=register_algorithm), name="typo", package="typo-pkg")
    assert m.add(_algo_plugin("fine", "fine_algo"), name="fine")
    (f,) = m.failures
    assert f.name == "typo" and "register_algorithm" in f.cause and "Did you mean 'register_algorithms'" in f.cause
    assert "fine_algo" in m.registry.names("algorithm")
    with pytest.raises(PluginError, match="typo"):
        m.raise_failures()


def test_plugin_raising_in_hook_is_isolated():
    @metareg.hookimpl
    def register_benchmarks(register):
        raise RuntimeError("boom")

    m = plugins.PluginManager()
    m.add(_module("bad", register_benchmarks=register_benchmarks), name="bad", package="bad-pkg", version="9.9")
    m.add(_algo_plugin("good", "good_algo"), name="good")
    assert "good_algo" in m.registry.names("algorithm")
    (f,) = m.failures
    assert (f.name, f.package, f.version, f.stage) == ("bad", "bad-pkg", "9.9", "register_benchmarks")
    assert "RuntimeError: boom" in f.cause


class _FakeDist:
    def __init__(self, name, version):
        self.metadata = {"Name": name}
        self.version = version


class _FakeEP:
    def __init__(self, name, target, dist):
        self.name, self._target, self.dist = name, target, dist

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_import_error_reported_with_package_version_and_cause():
    m = plugins.PluginManager()
    m.load_entry_points([
        _FakeEP("broken", ImportError("No module named 'nonexistent_dep'"), _FakeDist("broken-pkg", "1.2.3")),
        _FakeEP("ok", _algo_plugin("okmod", "ok_algo"), _FakeDist("ok-pkg", "0.1")),
    ])
    assert "ok_algo" in m.registry.names("algorithm")
    assert m.registry.get("algorithm", "ok_algo").package == "ok-pkg"
    (f,) = m.failures
    assert (f.name, f.package, f.version, f.stage) == ("broken", "broken-pkg", "1.2.3", "import")
    assert "nonexistent_dep" in f.cause


def test_env_allow_and_block(monkeypatch):
    monkeypatch.setenv("METAREG_DISABLE_PLUGINS", "reptile,anil")
    names = plugins.get_registry().names("algorithm")
    assert "reptile" not in names and "anil" not in names and "maml" in names
    plugins.reset()
    monkeypatch.delenv("METAREG_DISABLE_PLUGINS")
    monkeypatch.setenv("METAREG_PLUGINS", "maml")
    assert plugins.get_registry().names("algorithm") == ["fomaml", "maml"]


def test_unknown_name_suggests(registry):
    with pytest.raises(UnknownNameError, match="Did you mean 'meta_sgd'"):
        registry.get("algorithm", "metasgd")
    with pytest.raises(UnknownNameError, match="no preset 'fo_'.*Did you mean 'fo'"):
        registry.get("algorithm", "maml.fo_")
    assert registry.preset("maml.fo") == {"first_order": True}


def test_register_without_spec_is_a_plugin_error():
    @metareg.hookimpl
    def register_algorithms(register):
        register(object)

    m = plugins.PluginManager()
    m.add(_module("nospec", register_algorithms=register_algorithms), name="nospec")
    m.registry
    assert "carries no metareg spec" in m.failures[0].cause


def test_bad_registry_name():
    with pytest.raises(PluginError, match="lowercase snake_case"):
        _algo_plugin("badname", "Bad-Name")
