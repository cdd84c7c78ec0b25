"""Benchmarks live in bench_*.py (outside the default test run, whose testpaths is tests/);
collect them as well as test_*.py when pytest is pointed at this directory."""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
