#!/usr/bin/env bash
# GPU check of metareg's custom ops, for a machine with an NVIDIA GPU, a CUDA build of torch and
# the CUDA toolkit, and no internet.  Within about 8 minutes it
#   1. builds metareg._C with CUDA kernels for this card only (TORCH_CUDA_ARCH_LIST = its
#      compute capability) in a venv that sees the system's torch (--system-site-packages),
#   2. runs the CUDA cases of tests/ops (forward/backward vs reference in all four dtypes,
#      gradcheck/gradgradcheck, opcheck),
#   3. times each op beside its plain-torch baselines with CUDA events (medians; the
#      normalize+bmm baseline also under torch.compile where the issue's targets name it),
#   4. second-order MAML on Conv4 5-way 1-shot, meta-batch 32, at 1/5/10/20 inner steps: peak memory
#      (torch.cuda.max_memory_allocated) and time per outer step of the stored path, recompute=true,
#      recompute + task_chunk, iMAML and the per-task loop (benchmarks/maml_memory.py; at most 150 s),
#   5. MAML's sinusoid outer step by each path (closed form, autograd engine, compile=true) beside
#      torch.func.vmap (benchmarks/maml_step_paths.py; at most 120 s),
# and prints one summary table with the issue's GPU targets.  Run from anywhere:
#   bash benchmarks/gpu_check.sh            (PYTHON=python3.12 to pick the interpreter)
# Exit status: 0 when the build and the tests pass (missed speed targets are reported, not fatal).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
LOG=${LOG:-gpu_check.log}
START=$(date +%s)
: > "$LOG"

say() { printf '[gpu_check %3ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)"; then
  say "needs a CUDA build of torch and a visible GPU ($PYTHON)"; exit 2
fi
ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
say "$("$PYTHON" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"), arch $ARCH"

# -- 1. build -------------------------------------------------------------------------------
test -x "$VENV/bin/python" || "$PYTHON" -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
export TORCH_CUDA_ARCH_LIST="$ARCH" METAREG_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
say "building (TORCH_CUDA_ARCH_LIST=$ARCH, MAX_JOBS=$MAX_JOBS); log in $LOG"
if ! timeout 300 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . >>"$LOG" 2>&1; then
  # pip may lack setuptools' editable support offline: build in place, import from the checkout.
  say "pip install -e failed, building in place instead"
  timeout 300 "$PY" setup.py build_ext --inplace >>"$LOG" 2>&1 || { say "BUILD FAILED"; tail -40 "$LOG"; exit 1; }
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF' || { say "metareg._C did not load with CUDA kernels"; exit 1; }
import json, metareg.ops as ops
s = ops.status()
print(json.dumps({k: s[k] for k in ("extension_loaded", "reason", "build")}, indent=1))
assert s["extension_loaded"] and s["build"]["cuda"], s["reason"]
assert s["ops"]["pairwise_cosine"]["cuda"]["implementation"] == "compiled"
EOF

# -- 2. CUDA tests ----------------------------------------------------------------------------
say "CUDA tests"
timeout 180 "$PY" -m pytest -q -p no:cacheprovider --noconftest tests/ops -k "cuda and not compiles" 2>&1 | tee -a "$LOG" | tail -15
TEST_STATUS=${PIPESTATUS[0]}

# -- 3. timings -------------------------------------------------------------------------------
say "timings"
timeout 240 "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import os
import statistics
import time
import torch
import torch.nn.functional as F
from metareg import ops

torch.backends.cuda.matmul.allow_tf32 = False  # the targets are in full fp32 precision
# METAREG_GPU_CHECK_DRY=1 runs this table on the CPU with tiny shapes: a syntax/plumbing check.
DRY = os.environ.get("METAREG_GPU_CHECK_DRY") == "1"
dev = "cpu" if DRY else "cuda"
COPY_BW = 2.982e12   # H100 copy bandwidth from BENCHMARKS.md (read + write), bytes/s
FP32 = 51e12         # H100 measured fp32 matmul rate, FLOP/s


def time_us(fn, iters=100, warmup=10):
    if DRY:
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e6)
        return statistics.median(ts)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e) * 1e3)
    return statistics.median(out)


def nbmm(a, b):
    return torch.bmm(F.normalize(a, dim=-1), F.normalize(b, dim=-1).transpose(1, 2))


rows = []  # (case, metareg us, best baseline name, its us, floor us or None, target text, ok or None)
SHAPES = [(32, 75, 5, 64), (32, 75, 25, 1600), (1, 1024, 1024, 512), (8, 4096, 4096, 128)]
if DRY:
    SHAPES = [(32, 75, 5, 64), (2, 70, 66, 9)]
for shape in SHAPES:
    B, N, M, D = shape
    iters = 20 if B * N * M * D > 1e9 else 100
    a = torch.randn(B, N, D, device=dev)
    b = torch.randn(B, M, D, device=dev)
    G = torch.randn(B, N, M, device=dev)
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    compile_here = shape in [(32, 75, 5, 64), (8, 4096, 4096, 128)] and not DRY
    cnbmm = torch.compile(nbmm) if compile_here else None
    for mode in ("fwd", "fwd+bwd"):
        def run(fn):
            if mode == "fwd":
                def f():
                    with torch.no_grad():
                        fn(a, b)
            else:
                def f():
                    torch.autograd.grad(fn(ar, br), (ar, br), G)
            return time_us(f, iters)
        ours = run(ops.pairwise_cosine)
        base = {"normalize+bmm": run(nbmm)}
        if cnbmm is not None:
            try:
                base["normalize+bmm compiled"] = run(cnbmm)
            except Exception as exc:  # keep the table even if inductor fails here
                print("compile failed:", type(exc).__name__, exc)
        if B * N * M * D * 4 <= 2 * 1024**3:
            base["broadcast cosine_similarity"] = run(
                lambda x, y: F.cosine_similarity(x[:, :, None, :], y[:, None, :, :], dim=-1))
        name, best = min(base.items(), key=lambda kv: kv[1])
        floor = 2 * B * N * M * D / FP32 * 1e6 if mode == "fwd" else None
        target, ok = "", None
        if shape == (32, 75, 5, 64) and mode == "fwd+bwd":
            target, ok = ">= 10x best baseline", best / ours >= 10
        if shape == (8, 4096, 4096, 128) and mode == "fwd":
            target, ok = f"<= 1.25x floor ({floor:.0f} us)", ours <= 1.25 * floor
        rows.append((f"pairwise_cosine {mode} {B}x{N}x{M}x{D}", ours, name, best, floor, target, ok))
    del a, b, G, ar, br
    if not DRY:
        torch.cuda.empty_cache()


def conv4():
    s, c = [], 1
    for _ in range(4):
        s += [(64, c, 3, 3), (64,), (64,), (64,)]
        c = 64
    return s + [(5, 64), (5,)]


MODELS = {"conv4": conv4(), "mlp40": [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]}
for model, T in [("conv4", 32), ("mlp40", 25)] if DRY else [("conv4", 32), ("conv4", 256), ("mlp40", 25),
                                                              ("mlp40", 1024)]:
    shapes = MODELS[model]
    sizes = [torch.Size(s).numel() for s in shapes]
    P = sum(sizes)
    theta = torch.randn(P, device=dev)
    grads = torch.randn(T, P, device=dev)
    tl = [t.view(s) for t, s in zip(theta.split(sizes), shapes)] * T
    gl = [g.view(s) for t in range(T) for g, s in zip(grads[t].split(sizes), shapes)]
    ours = time_us(lambda: ops.task_step(theta, grads, 0.4))
    base = {"stacked torch.sub": time_us(lambda: torch.sub(theta, grads, alpha=0.4)),
            "one _foreach_add": time_us(lambda: torch._foreach_add(tl, gl, alpha=-0.4), iters=20),
            "per-tensor loop": time_us(lambda: [torch.sub(p, g, alpha=0.4) for p, g in zip(tl, gl)], iters=20)}
    name, best = min(base.items(), key=lambda kv: kv[1])
    floor = (2 * T * P + P) * 4 / COPY_BW * 1e6
    target, ok = "", None
    if (model, T) == ("conv4", 32):
        target, ok = f"<= 2x floor ({floor:.1f} us)", ours <= 2 * floor
    rows.append((f"task_step {model} T={T}", ours, name, best, floor, target, ok))

print()
print(f"metareg GPU check: {'CPU dry run' if DRY else torch.cuda.get_device_name()}, torch {torch.__version__}, fp32 without TF32 "
      "(event-timed medians; ratio = best baseline / metareg)")
hdr = ("case", "metareg", "best baseline", "baseline", "ratio", "floor", "target", "")
table = [hdr] + [(c, f"{o:.1f} us", n, f"{b:.1f} us", f"{b / o:.2f}x", f"{f:.1f} us" if f else "-", t,
                  "" if ok is None else ("PASS" if ok else "MISS")) for c, o, n, b, f, t, ok in rows]
w = [max(len(r[i]) for r in table) for i in range(len(hdr))]
for i, r in enumerate(table):
    print("  ".join(x.ljust(k) for x, k in zip(r, w)).rstrip())
    if i == 0:
        print("  ".join("-" * k for k in w))
EOF
# -- 4. MAML memory against inner steps ---------------------------------------------------------
say "MAML memory: stored / recompute / chunked / imaml / per-task loop"
if [ "${METAREG_GPU_CHECK_DRY:-}" = 1 ]; then
  MEM_ARGS="--device cpu --tasks 2 --steps 1,2 --reps 1"
else
  MEM_ARGS="--device cuda --tasks 32 --steps 1,20,5,10 --reps 3"
fi
# shellcheck disable=SC2086
timeout 150 "$PY" benchmarks/maml_memory.py $MEM_ARGS --json "${LOG%.log}_maml_memory.json" 2>&1 | tee -a "$LOG" | tail -22

# -- 5. MAML step paths ------------------------------------------------------------------------
say "MAML sinusoid step: closed form / autograd / compile=true / vmap"
if [ "${METAREG_GPU_CHECK_DRY:-}" = 1 ]; then
  STEP_ARGS="--device cpu --steps 5 --repeats 1 --no-compile"
else
  STEP_ARGS="--device cuda --steps 100 --repeats 3"
fi
# shellcheck disable=SC2086
timeout 120 "$PY" benchmarks/maml_step_paths.py $STEP_ARGS --json "${LOG%.log}_maml_step_paths.json" 2>&1 | tee -a "$LOG" | tail -8

say "tests exit status $TEST_STATUS; full log in $LOG"
exit "$TEST_STATUS"
