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
# MXNet 1.9.1 needs numpy < 1.24: its own environment, driven through a worker process.
MXNET_VENV := .venv-mxnet
MXNET_SYNCED := $(MXNET_VENV)/.synced
DCNBENCH := $(VENV)/bin/dcnbench
# Debian's Chromium opens the generated HTML report in the browser tests (tests/test_report_browser.py).
CHROMIUM ?= /usr/bin/chromium

.PHONY: help env mxnet-env chromium demo test example-report gpu-check clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   create the environment, run dcnbench verify and short dcnbench speed runs (convolution, RoI pooling)"
	@echo "make test   create the environment and run the tests"
	@echo "make gpu-check   on a GPU machine: build ext for CUDA, verify on CUDA, time the presets (to \$$OUT)"
	@echo "make mxnet-env   create .venv-mxnet (mxnet 1.9.1, numpy 1.23.5) for the mxnet backend"
	@echo "make chromium    install Debian's chromium (as root) for the browser test of the HTML report"
	@echo "make example-report   regenerate reports/example/ from one run of every backend and operator, check it in Chromium"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

$(MXNET_SYNCED): dcnbench/backends/mxnet/requirements.txt | $(UV)
	$(UV) venv --allow-existing --quiet --python 3.11 $(MXNET_VENV)
	$(UV) pip install --quiet --python $(MXNET_VENV)/bin/python --require-hashes -r dcnbench/backends/mxnet/requirements.txt
	@touch $@

env: $(SYNCED)

mxnet-env: $(MXNET_SYNCED)

# Installed from Debian's packages when missing (CI runs as root on a fresh machine).
$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then echo "Chromium is missing at $(CHROMIUM): as root, apt-get install chromium (or set CHROMIUM=...)"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

chromium: $(CHROMIUM)

demo: $(SYNCED) $(MXNET_SYNCED)
	$(DCNBENCH) backends
	$(DCNBENCH) verify
	$(DCNBENCH) speed --preset dcn-56 --repeat 5 --warmup 0.3
	$(DCNBENCH) speed --preset faster-rcnn --repeat 3 --warmup 0.3

# Every CUDA source compiled with nvcc (no GPU here, so objects only: a broken .cu fails CI), the
# tests (the browser test of the HTML report must run, not skip), then the project's own gate against
# the committed baseline: correctness is hard, performance is printed only (a shared machine is too
# noisy to fail CI on).
test: $(SYNCED) $(MXNET_SYNCED) $(CHROMIUM)
	$(DCNBENCH) build --cuda-objects build/cuda-objects
	DCNBENCH_REQUIRE_BROWSER=1 DCNBENCH_CHROMIUM=$(CHROMIUM) $(VENV)/bin/pytest
	$(DCNBENCH) gate --baseline reports/baseline-cpu.json --performance report-only --summary results/gate-summary.md

# One verify run and one speed run of every available backend on every registered operator's default
# preset, reports/example/ written from them, and the page checked in Chromium (screenshot in results/).
example-report: $(SYNCED) $(MXNET_SYNCED) $(CHROMIUM)
	DCNBENCH_CHROMIUM=$(CHROMIUM) bash benchmarks/example_report.sh

# On a GPU machine with torch preinstalled (no uv, no network): PYTHONPATH=. with its python3.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) $(MXNET_VENV) .tools results
