"""The extension as a whole: import without it, status/`metareg ops`, torch.compile, and a compile
check of the CUDA sources that runs without a GPU (nvcc for the kernels, g++ for the glue)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from metareg.ops._registration import DISABLE_ENV, extension, has_kernel
from metareg.ops._table import OPS

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
needs_ext = pytest.mark.skipif(extension is None, reason="metareg._C is not built")


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=ROOT)


def test_import_and_ops_work_without_the_extension():
    code = """
import warnings, json, torch
import metareg, metareg.ops as ops
a = torch.randn(2, 4, 3)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    c = ops.pairwise_cosine(a)
    s = ops.task_step(torch.zeros(3), torch.ones(2, 3), 0.5)
    ops.task_step(torch.zeros(3), torch.ones(2, 3), torch.ones(3))
torch.testing.assert_close(c, ops._reference.pairwise_cosine(a))
assert s.eq(-0.5).all()
print(json.dumps({"status": ops.status(), "warnings": [str(w.message) for w in caught],
                  "C_imported": "metareg._C" in __import__("sys").modules}))
"""
    proc = _run_python(code, **{DISABLE_ENV: "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"]["extension_loaded"] is False
    assert DISABLE_ENV in out["status"]["reason"]
    assert not out["C_imported"]
    assert all(v["implementation"] in ("reference", "composed") for op in out["status"]["ops"].values() for v in op.values())
    assert out["status"]["ops"]["pairwise_cosine"]["cpu"]["implementation"] == "reference"
    assert len(out["warnings"]) == 1 and "reference" in out["warnings"][0]


@needs_ext
def test_status_reports_the_build():
    from metareg.ops import status

    s = status()
    assert s["extension_loaded"] is True
    assert s["build"]["torch_version"] == torch.__version__.split("+")[0]
    assert s["ops"]["pairwise_cosine"]["cpu"]["implementation"] == "compiled"
    cuda = s["ops"]["task_step"]["cuda"]["implementation"]
    assert cuda == ("compiled" if s["build"]["cuda"] else "reference")


def test_ops_command_text_and_json():
    from click.testing import CliRunner

    from metareg.commands.ops import ops

    res = CliRunner().invoke(ops, ["--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert list(data["ops"]) == [spec.name for spec in OPS]
    res = CliRunner().invoke(ops, [])
    assert res.exit_code == 0
    for spec in OPS:  # each op's row of the table, with its summary
        assert f"{spec.name}: {spec.summary}" in res.output
    assert ("loaded" if extension is not None else "NOT loaded") in res.output


def test_op_table_matches_the_schemas_and_the_wrappers():
    # one table describes the ops: every compiled op it names has a schema in csrc/ops.cpp, every
    # schema there is named by it, and every row has a public wrapper with a reference
    import metareg.ops as public

    schemas = set(re.findall(r'm\.def\("(\w+)\(', (CSRC / "ops.cpp").read_text()))
    used = {op for spec in OPS for op in spec.uses}
    assert used == schemas
    for spec in OPS:
        assert spec.uses[0] == spec.name and spec.name in public.__all__
        assert callable(getattr(public, spec.name))
        assert spec.fallback[0] in ("reference", "composed")
        assert spec.fallback[0] == "composed" or hasattr(public._reference, spec.name)
        assert set(spec.kernels) <= {"cpu", "cuda"}
        if extension is not None:
            for op in spec.uses:
                assert hasattr(torch.ops.metareg, op)
            assert has_kernel.get((spec.name, "cpu"), False) == ("cpu" in spec.kernels)


def test_bench_table_ratios():
    from metareg.commands.bench import format_table, ratio_rows

    def b(name, group, role, median, label=None):
        info = {"role": role} | ({"label": label} if label else {})
        return {"name": name, "group": group, "extra_info": info, "stats": {"median": median}}

    data = {"benchmarks": [b("test_x[ours]", "case A", "metareg", 1e-3), b("test_x[bmm]", "case A", "baseline", 3e-3,
                                                                            "normalize+bmm"),
                           b("test_loop", "case A", "baseline", 5e-4), b("test_y", "case B", "baseline", 2.0)]}
    rows = ratio_rows(data)
    assert [(r["group"], r["baseline"], r["ratio"]) for r in rows] == [
        ("case A", "normalize+bmm", pytest.approx(3.0)), ("case A", "loop", pytest.approx(0.5)),
        ("case B", "y", None)]
    table = format_table(rows)
    assert "3.00x" in table and "0.50x" in table and "2 s" in table


@needs_ext
def test_torch_compile_fullgraph_forward_and_backward():
    # aot_eager traces both ops and their backward through the fake kernels and autograd without
    # paying for inductor's C++ codegen (that is test_torch_compile_inductor, marked slow).
    from metareg import ops

    def f(a, b, theta, g, lr):
        return ops.pairwise_cosine(a, b).square().sum() + ops.task_step(theta, g, 0.1).sum() + \
            ops.task_step(theta, g, lr).square().sum()

    args = [torch.randn(2, 5, 7), torch.randn(2, 3, 7), torch.randn(9), torch.randn(4, 9), torch.rand(9)]
    eager = [t.clone().requires_grad_() for t in args]
    compiled = [t.clone().requires_grad_() for t in args]
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    y_e, y_c = f(*eager), cf(*compiled)
    torch.testing.assert_close(y_c, y_e)
    y_e.backward()
    y_c.backward()
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c.grad, e.grad)


@needs_ext
@pytest.mark.slow
def test_torch_compile_inductor():
    from metareg import ops

    @torch.compile(fullgraph=True)
    def f(a, theta, g):
        return ops.pairwise_cosine(a).sum() + ops.task_step(theta, g, 0.1).sum()

    a, theta, g = torch.randn(3, 4, 5, requires_grad=True), torch.randn(6, requires_grad=True), torch.randn(2, 6)
    f(a, theta, g).backward()
    a2, theta2 = a.detach().clone().requires_grad_(), theta.detach().clone().requires_grad_()
    (ops.pairwise_cosine(a2).sum() + ops.task_step(theta2, g, 0.1).sum()).backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(theta.grad, theta2.grad)


# -- CUDA sources compile without a GPU -------------------------------------------------------

NVCC = shutil.which("nvcc")
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_kernels_compile(source, tmp_path):
    # One real architecture keeps this to seconds; sm_80 is the oldest with native bfloat16.
    cmd = [NVCC, "-c", "-std=c++17", "-O1", "-arch=sm_80", "-I", str(CSRC), str(source), "-o",
           str(tmp_path / (source.stem + ".o"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


def _cuda_include() -> Path | None:
    if NVCC is None:
        return None
    # nvcc may be a wrapper script outside the toolkit, so look where toolkits live too.
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), str(Path(NVCC).resolve().parent.parent),
             "/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return Path(root) / "include"
    return None


GLUE_FILES = sorted((CSRC / "cuda").glob("*.cpp"))
TORCH_INC = Path(torch.__file__).parent / "include"


@pytest.mark.skipif(_cuda_include() is None or shutil.which("g++") is None, reason="needs nvcc's headers and g++")
@pytest.mark.skipif(not (TORCH_INC / "c10" / "cuda" / "CUDAStream.h").exists(), reason="torch ships no c10/cuda")
@pytest.mark.skipif(not GLUE_FILES, reason="no glue sources")
def test_cuda_glue_compiles(tmp_path):
    # A CPU wheel of torch ships c10/cuda but not the CMake-generated cuda_cmake_macros.h; an
    # equivalent stub lets g++ type-check the glue (checks, dispatch, launcher calls).  All glue
    # files go through one translation unit so torch's headers are parsed once.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    unit = tmp_path / "all_glue.cpp"
    unit.write_text("".join(f'#include "{p}"\n' for p in GLUE_FILES))
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-DMETAREG_WITH_CUDA", "-I", str(CSRC), "-I", str(tmp_path),
           "-I", str(TORCH_INC), "-I", str(TORCH_INC / "torch" / "csrc" / "api" / "include"),
           "-I", str(_cuda_include()), "-I", sysconfig.get_paths()["include"], str(unit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
