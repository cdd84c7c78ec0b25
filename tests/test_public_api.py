"""The public surface: built-in plugins (and the example package) use only what ``metareg``
exports, and every built-in plugin file is loaded through an entry point."""

import ast
import tomllib
from pathlib import Path

import pytest

import metareg

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted(p for p in (ROOT / "plugins").glob("*.py") if p.name != "__init__.py")
EXAMPLE_FILES = sorted(p for p in (ROOT / "examples" / "metareg-example").rglob("*.py")
                       if "build" not in p.relative_to(ROOT).parts)  # pip's in-tree build copy
PUBLIC_MODULES = {"metareg", "metareg.errors", "metareg.ops"}


def _violations(path: Path) -> list[str]:
    builtin = (ROOT / "plugins") in path.parents  # a built-in plugin is one module: a relative import reaches another plugin
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "metareg":
            if node.module not in PUBLIC_MODULES:
                bad.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "metareg":
                bad += [f"line {node.lineno}: from metareg import {a.name} (not in metareg.__all__)"
                        for a in node.names if a.name not in metareg.__all__]
        elif isinstance(node, ast.ImportFrom) and node.level and builtin:
            bad.append(f"line {node.lineno}: relative import (a built-in plugin imports no other plugin)")
        elif isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] == "metareg" and a.name not in PUBLIC_MODULES]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "metareg"
              and node.attr not in metareg.__all__):
            bad.append(f"line {node.lineno}: metareg.{node.attr} (not in metareg.__all__)")
    return bad


@pytest.mark.parametrize("path", PLUGIN_FILES + EXAMPLE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    assert _violations(path) == []


def test_the_check_catches_private_imports(tmp_path):
    f = tmp_path / "p.py"
    f.write_text("import metareg\nfrom metareg.learners.multitask import run_columns\nfrom metareg import nope\n"
                 "x = metareg.runner\nfrom metareg import Learner\nfrom .other import thing\n")
    assert len(_violations(f)) == 3  # relative imports are fine inside a third party's own package
    builtin = ROOT / "plugins" / "_probe_for_test.py"
    builtin.write_text("from .maml import MAML\n")
    try:
        assert _violations(builtin) == ["line 1: relative import (a built-in plugin imports no other plugin)"]
    finally:
        builtin.unlink()


def test_every_plugin_file_has_an_entry_point():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["metareg"]
    targets = set(eps.values())
    missing = [p.stem for p in PLUGIN_FILES if f"metareg_plugins.{p.stem}" not in targets]
    assert missing == [], f"plugins without an entry point in pyproject.toml: {missing}"
    dangling = [t for t in targets if not (ROOT / "plugins" / f"{t.split('.')[-1]}.py").is_file()]
    assert dangling == []


def test_all_names_exist():
    missing = [n for n in metareg.__all__ if not hasattr(metareg, n)]
    assert missing == []
