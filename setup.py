"""Builds only the extension metareg._C from csrc/ (everything else is in pyproject.toml).

C++ sources are always built.  CUDA sources are added when both the CUDA toolkit (nvcc, found by
torch as CUDA_HOME) and a CUDA build of torch are present: the decision never depends on
``torch.cuda.is_available()``, so a GPU-less build node still builds CUDA kernels for the cards
they will run on.  ``METAREG_CUDA=0`` forces a CPU-only build, ``METAREG_CUDA=1`` makes a missing
CUDA toolchain an error; ``METAREG_NO_EXTENSION=1`` skips the extension (pure-Python install, ops
fall back to their reference implementation).  The resolved configuration is printed.

Install with ``pip install --no-build-isolation .`` so the build sees the torch you installed.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def extensions():
    if os.environ.get("METAREG_NO_EXTENSION") == "1":
        print("metareg build: METAREG_NO_EXTENSION=1, skipping metareg._C", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_src = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    if not cpp:
        return [], {}
    force = os.environ.get("METAREG_CUDA")
    torch_cuda = torch.version.cuda is not None
    toolkit = CUDA_HOME is not None
    if force == "0":
        use_cuda, why = False, "METAREG_CUDA=0"
    elif torch_cuda and toolkit and cuda_src:
        use_cuda, why = True, f"torch {torch.__version__} built with CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}"
    else:
        use_cuda = False
        why = "no CUDA build of torch" if not torch_cuda else ("no CUDA toolkit (nvcc)" if not toolkit else "no CUDA sources")
        if force == "1":
            raise SystemExit(f"metareg build: METAREG_CUDA=1 but {why}")
    # No -std flag: torch.utils.cpp_extension adds the standard its headers need (C++17 or C++20).
    cxx = ["-O3"]
    if sys.platform != "win32":
        cxx += ["-fopenmp"] if os.environ.get("METAREG_OPENMP", "1") == "1" else []
    define = [("METAREG_WITH_CUDA", "1")] if use_cuda else []
    common = dict(
        name="metareg._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define,
        extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [],
    )
    if use_cuda:
        ext = CUDAExtension(sources=cpp + cuda_src, extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"] if os.environ.get("METAREG_FAST_MATH") == "1" else ["-O3"]}, **common)
    else:
        ext = CppExtension(sources=cpp, extra_compile_args={"cxx": cxx}, **common)
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "torch default")
    print(f"metareg build: torch {torch.__version__}, CUDA kernels: {'yes' if use_cuda else 'no'} ({why}); "
          f"arch list: {arch if use_cuda else '-'}; sources: {', '.join(ext.sources)}", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
