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
DCNBENCH := $(VENV)/bin/dcnbench

.PHONY: help env demo test verify speed clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   create the environment, run dcnbench verify and a short dcnbench speed"
	@echo "make test   create the environment and run the tests"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

env: $(SYNCED)

demo: $(SYNCED)
	$(DCNBENCH) backends
	$(DCNBENCH) verify
	$(DCNBENCH) speed --preset dcn-56 --repeat 5 --warmup 0.3

test: $(SYNCED)
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .tools results
