"""Strict, atomic registration: the broken-plugin cases a plugin author hits, each refused at
registration with one clear message while the built-ins keep working."""

import subprocess
import sys
import textwrap
import types

import pytest
from click.testing import CliRunner

import metareg
from metareg import plugins
from metareg.cli import make_cli
from metareg.errors import DuplicateNameError, UnknownNameError
from metareg.registry import spec_of
from metareg.runner import Run


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


@metareg.config
class _Cfg(metareg.GradientMetaConfig):
    pass


def _algo(name, **spec):
    kw = dict(kind="meta", family="optimization", summary="s", paper="p", config=_Cfg, requires={"episodic"})
    kw.update(spec)

    @metareg.algorithm(name, **kw)
    class A(metareg.GradientMetaLearner):
        pass

    return A


def _plugin(modname, *algos, benchmarks=()):
    @metareg.hookimpl
    def register_algorithms(register):
        for a in algos:
            register(a)

    attrs = {"register_algorithms": register_algorithms}
    if benchmarks:
        @metareg.hookimpl
        def register_benchmarks(register):
            for b in benchmarks:
                register(b)

        attrs["register_benchmarks"] = register_benchmarks
    return _module(modname, **attrs)


def _manager_with(*third_party):
    """The installed plugins plus the given (module, package) pairs, as a fresh manager."""
    m = plugins.PluginManager()
    m.load_entry_points()
    for mod, package in third_party:
        m.add(mod, name=mod.__name__, package=package, version="0.1")
    return m


def _only_failure(m, package):
    mine = [f for f in m.failures if f.package == package]
    assert len(mine) == 1, [f.line() for f in m.failures]
    return mine[0]


def test_builtin_wins_a_name_clash_and_the_other_stays_reachable_qualified():
    m = _manager_with((_plugin("evil", _algo("maml")), "evil-pkg"))
    reg = m.registry
    assert reg.get("algorithm", "maml").package == "metareg"  # the built-in is not disabled
    f = _only_failure(m, "evil-pkg")
    assert "evil-pkg" in f.cause and "metareg" in f.cause and "evil-pkg:maml" in f.cause
    assert reg.get("algorithm", "evil-pkg:maml").package == "evil-pkg"
    assert reg.get("algorithm", "evil_pkg:maml").package == "evil-pkg"  # pip's name normalisation
    run = Run("evil-pkg:maml", "sinusoid", {"steps": 1}, manager=m)
    assert run.algo_spec.package == "evil-pkg"
    assert run.resolved_config()["algorithm_ref"] == "evil-pkg:maml"
    assert Run("maml", "sinusoid", {"steps": 1}, manager=m).algo_spec.package == "metareg"
    # listed under its qualified name beside the built-in
    r = CliRunner().invoke(make_cli(m), ["list", "maml", "--json"])
    import json
    names = [(a["name"], a["package"]) for a in json.loads(r.stdout)["algorithms"]]
    assert ("maml", "metareg") in names and ("maml", "evil-pkg") in names


def test_two_third_party_packages_clash_and_neither_is_chosen_silently():
    m = _manager_with((_plugin("one", _algo("twin")), "pkg-one"), (_plugin("two", _algo("twin")), "pkg-two"))
    with pytest.raises(DuplicateNameError, match="pkg-one:twin.*pkg-two:twin"):
        m.registry.get("algorithm", "twin")
    assert m.registry.get("algorithm", "pkg-two:twin").package == "pkg-two"


@pytest.mark.parametrize("spec,message", [
    ({"kind": "metaa"}, "kind must be one of 'meta', 'multitask', got 'metaa'. Did you mean 'meta'"),
    ({"family": "optimisation"}, "unknown family 'optimisation'. Did you mean 'optimization'"),
    ({"requires": {"episodc"}}, "unknown required capability 'episodc'. Did you mean 'episodic'"),
    ({"config": _Cfg()}, "config must be a class decorated with @metareg.config, got an instance of _Cfg"),
])
def test_invalid_specs_are_refused_at_registration(spec, message):
    m = _manager_with((_plugin("bad", _algo("bad_algo", **spec)), "bad-pkg"))
    reg = m.registry
    f = _only_failure(m, "bad-pkg")
    assert message in f.cause and f.stage == "register_algorithms"
    assert "bad_algo" not in reg.names("algorithm")
    assert Run("maml", "sinusoid", {"steps": 1}, manager=m).algo_spec.package == "metareg"


def test_a_default_of_the_wrong_type_blames_the_plugin_not_the_user():
    @metareg.config
    class Wrong:
        shots: int = metareg.param("five", "support examples")

    m = _manager_with((_plugin("wrongdefault", _algo("wrong_default", config=Wrong)), "wd-pkg"))
    m.registry
    f = _only_failure(m, "wd-pkg")
    assert "a default of config Wrong is invalid: shots must be an integer, got 'five'" in f.cause
    assert "user did nothing wrong" in f.cause


def test_a_plugin_registers_all_of_its_names_or_none():
    @metareg.config
    class BCfg:
        meta_batch: int = metareg.param(2, "tasks")

    @metareg.benchmark("half_bench", summary="s", config=BCfg, provides={"episodic"}, metric="mse")
    class HalfBench(metareg.TaskDistribution):
        pass

    mod = _plugin("half", _algo("half_good"), _algo("half_bad", kind="nope"), benchmarks=[HalfBench])
    m = _manager_with((mod, "half-pkg"))
    reg = m.registry
    assert "half_good" not in reg.names("algorithm") and "half_bench" not in reg.names("benchmark")
    assert "Nothing of this plugin was registered" in _only_failure(m, "half-pkg").cause


def test_an_undecorated_subclass_does_not_inherit_its_parents_registration():
    parent = _algo("parent_algo")

    class Child(parent):  # forgot @metareg.algorithm
        pass

    m = _manager_with((_plugin("child", Child), "child-pkg"))
    m.registry
    f = _only_failure(m, "child-pkg")
    assert "carries no metareg spec" in f.cause and "inherits the spec of 'parent_algo'" in f.cause
    assert spec_of(Child) is None and spec_of(parent).name == "parent_algo"


def test_dotted_capabilities_are_a_plugins_own_vocabulary():
    m = _manager_with((_plugin("own", _algo("own_caps", requires={"episodic", "mypkg.graphs"})), "own-pkg"))
    assert m.registry.get("algorithm", "own_caps").requires == {"episodic", "mypkg.graphs"}
    assert [f for f in m.failures if f.package == "own-pkg"] == []


def test_qualified_name_of_an_unknown_package_says_who_has_it():
    with pytest.raises(UnknownNameError, match="no package 'nobody' registers algorithm 'maml'.*metareg:maml"):
        plugins.get_registry().get("algorithm", "nobody:maml")


_CLI_SCRIPT = textwrap.dedent("""
    import sys, types
    import metareg
    from metareg import cli, plugins

    cli._install_warning_handler()

    class EP:
        name = "broken"
        class dist:
            metadata = {"Name": "broken-pkg"}
            version = "1.0"
        def load(self):
            raise ImportError("No module named 'missing_dep'")

    @metareg.hookimpl
    def register_algorithm(register):  # misspelt hook
        pass

    m = plugins.PluginManager()
    m.load_entry_points()
    m.load_entry_points([EP()])
    m.add(types.SimpleNamespace(register_algorithm=register_algorithm), name="typo", package="typo-pkg", version="2.0")
    plugins.reset(m)
    cli.main(sys.argv[1:])
""")


@pytest.mark.parametrize("argv", [["list"], ["run", "maml", "-b", "sinusoid", "--steps", "1", "--no-save",
                                            "--set", "eval_tasks=2", "--set", "val_every=0"]])
def test_every_load_problem_is_reported_once_on_every_command(argv):
    r = subprocess.run([sys.executable, "-c", _CLI_SCRIPT, *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("missing_dep") == 1, r.stderr
    assert r.stderr.count("'register_algorithm' is marked @metareg.hookimpl") == 1, r.stderr
    assert r.stderr.count("warning: plugin 'broken' from broken-pkg 1.0 failed at import") == 1


def test_plugins_strict_fails_on_any_load_problem():
    m = _manager_with((_plugin("evil2", _algo("maml")), "evil2-pkg"))
    r = CliRunner().invoke(make_cli(m), ["plugins", "--strict"])
    assert r.exit_code == 2 and "evil2-pkg" in r.stderr
