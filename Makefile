# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both create the environment first: uv (bootstrapped with pip when missing) installs the locked
# dependencies from uv.lock into .venv.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
VENV := .venv
SYNCED := $(VENV)/.synced
# Framework backends whose dependencies conflict with dcnbench's (MXNet 1.9.1 needs numpy < 1.24;
# paddle pins its own stack) each get an environment of their own, .venv-<name>, built from the
# hashed dcnbench/backends/<name>/requirements.txt with the Python in its .python-version, and
# are driven through a worker process (dcnbench/worker/).
WORKER_ENVS := mxnet paddle
WORKER_SYNCED := $(foreach e,$(WORKER_ENVS),.venv-$(e)/.synced)
DCNBENCH := $(VENV)/bin/dcnbench
# Debian's Chromium opens the generated HTML report in the browser tests (tests/test_report_browser.py).
CHROMIUM ?= /usr/bin/chromium

# Tests of agreement across libraries, thread counts or runs (marker `any_cpu`) run a second time
# with torch's generic kernels, MKL limited to SSE4.2 and oneDNN to SSE4.1: vector widths other than
# the main run's on any x86-64 CPU (AVX2 or AVX-512), so an agreement that held only at one width
# fails CI on whatever machine runs it. Only the files that hold such tests are collected.
NARROW_CPU := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
ANY_CPU_TESTS = $(shell grep -l 'mark.any_cpu' tests/test_*.py)

# Bytecode caches stay on: where PYTHONDONTWRITEBYTECODE is exported (this machine's images do),
# every process the tests start would compile torch's Python sources again (measured: importing
# torch, torchvision and dcnbench takes 22 s without caches, 8 s with them).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help env envs $(foreach e,$(WORKER_ENVS),$(e)-env) chromium demo test docs example-report gpu-check clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   create the environment, run dcnbench verify and short dcnbench speed runs (convolution, RoI pooling)"
	@echo "make test   create the environment and run the tests"
	@echo "make docs   build the reference site (docs/, mkdocs.yml) strictly into results/site"
	@echo "make gpu-check   on a GPU machine: build ext for CUDA, verify on CUDA, time the presets (to \$$OUT)"
	@echo "make envs   create every framework backend's own environment: $(WORKER_ENVS)"
	@echo "make mxnet-env   create .venv-mxnet (mxnet 1.9.1, numpy 1.23.5) for the mxnet backend"
	@echo "make paddle-env  create .venv-paddle (paddlepaddle 3.3.1 CPU) for the paddle backend"
	@echo "make chromium    install Debian's chromium (as root) for the browser test of the HTML report"
	@echo "make example-report   regenerate reports/example/ from one run of every backend and operator, check it in Chromium"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

# `pip sync` (not install): a package dropped from the lock leaves the environment too.
$(WORKER_SYNCED): .venv-%/.synced: dcnbench/backends/%/requirements.txt dcnbench/backends/%/.python-version | $(UV)
	$(UV) venv --allow-existing --quiet --python $$(cat dcnbench/backends/$*/.python-version) .venv-$*
	$(UV) pip sync --quiet --python .venv-$*/bin/python --require-hashes $<
	@touch $@

env: $(SYNCED)

envs: $(WORKER_SYNCED)

$(addsuffix -env,$(WORKER_ENVS)): %-env: .venv-%/.synced

# Installed from Debian's packages when missing (CI runs as root on a fresh machine).
$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then echo "Chromium is missing at $(CHROMIUM): as root, apt-get install chromium (or set CHROMIUM=...)"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

chromium: $(CHROMIUM)

demo: $(SYNCED) $(WORKER_SYNCED)
	$(DCNBENCH) backends
	$(DCNBENCH) verify
	$(DCNBENCH) speed --preset dcn-56 --repeat 5 --warmup 0.3
	$(DCNBENCH) speed --preset faster-rcnn --repeat 3 --warmup 0.3

# The reference site, built strictly (mkdocs.yml): a broken link, a missing page or a page left out of
# the nav fails. MkDocs and its Material theme are dev dependencies in uv.lock, so .venv has them.
# (NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0 is not about this site.) Never --quiet: it
# drops warnings before strict mode counts them, and a broken link then builds (mkdocs#4126, open;
# measured by tests/test_docs.py); nor -v, which skips the anchor checks (mkdocs#3991).
docs: $(SYNCED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The docs site first (seconds: a broken link fails fast), then the CUDA library built exactly as a
# GPU user's first run builds it (compiled and linked for sm_80 and sm_90; no GPU here, so it is not
# run: a build that fails for a user fails CI), the tests (they run the CUDA kernels emulated on the
# CPU, under ThreadSanitizer too; the browser test of the HTML report must run, not skip), then the
# project's own gate against the committed baseline, correctness only: performance on a shared
# machine is too noisy to fail CI on, and timing it here only to print it cost 2.5 of the 20 minutes
# (`dcnbench gate --baseline reports/baseline-cpu.json` measures it on demand).
test: $(SYNCED) $(WORKER_SYNCED) $(CHROMIUM)
	$(MAKE) --no-print-directory docs
	$(DCNBENCH) build --cuda-objects build/cuda-objects
	DCNBENCH_REQUIRE_BROWSER=1 DCNBENCH_CHROMIUM=$(CHROMIUM) $(VENV)/bin/pytest
	$(NARROW_CPU) $(VENV)/bin/pytest -n 0 -p no:cacheprovider -m any_cpu $(ANY_CPU_TESTS)
	$(DCNBENCH) gate --baseline reports/baseline-cpu.json --performance off --summary results/gate-summary.md

# One verify run and one speed run of every available backend on every registered operator's default
# preset, reports/example/ written from them, and the page checked in Chromium (screenshot in results/).
example-report: $(SYNCED) $(WORKER_SYNCED) $(CHROMIUM)
	DCNBENCH_CHROMIUM=$(CHROMIUM) bash benchmarks/example_report.sh

# On a GPU machine with torch preinstalled (no uv, no network): PYTHONPATH=. with its python3.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) $(foreach e,$(WORKER_ENVS),.venv-$(e)) .tools results
