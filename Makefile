# metareg: the README's commands.
#
#   make install     create .venv, install torch ($(TORCH)) and metareg with its C++ extension
#   make run         the paradigms suite on sinusoid: 2 seeds, K = 1, 5, 10, 20 s of training each (< 3 min on 2 cores)
#   make test        the whole default test suite (installs first if needed)
#   make test-slow   the slow accuracy checks (MAML sinusoid, 3,000 outer steps)
#   make bench       the benchmarks (pytest-benchmark; one table of ratios against baselines)
#   make gpu-check   on a GPU machine: CUDA build, CUDA tests, benchmarks (benchmarks/gpu_check.sh)
#
# TORCH chooses the torch requirement. The default is the CPU wheel that CI uses; GPU users pass
# e.g. `make install TORCH="torch==2.11.0"` (or any torch>=2.4 already installed in VENV with
# TORCH="torch>=2.4"). The extension is built with --no-build-isolation: an isolated build would
# download a second, multi-GB torch just to compile against.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
MAX_JOBS ?= 2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.metareg-installed
SOURCES := Makefile pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.h csrc/cuda/*.cuh)

.PHONY: install run test test-slow bench gpu-check clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH)"
	$(PIP) install -q --disable-pip-version-check "setuptools>=64" wheel ninja
	MAX_JOBS=$(MAX_JOBS) $(PIP) install -q --disable-pip-version-check --no-build-isolation -e ".[test,digits]"
	$(PY) -c "import metareg.ops as o; s = o.status(); print('metareg installed; extension loaded:', s['extension_loaded'])"
	touch $(STAMP)

# one learner per family, the same 20 s of training each, 2 runs at a time; prints the tables and writes
# runs/make-run/{report.md,compare.csv,compare.json,plots/*.png}; a second `make run` reuses the finished runs
run: install
	$(VENV)/bin/metareg compare --suite paradigms -b sinusoid --seeds 2 --shots 1,5,10 --budget seconds=20 \
		--set eval_tasks=200 --jobs 2 --out runs/make-run

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(VENV)/bin/metareg bench

# on a GPU machine: builds the CUDA kernels for that card, runs the CUDA tests and the benchmarks
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info metareg/_C*.so $(STAMP)
