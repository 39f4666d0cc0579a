# Two entry points: `make demo` (the synthetic-world demo) and `make test` (lint + tests).
# Both create .venv when it is missing and install exactly the tested versions of requirements.lock
# (torch==2.13.0, the CPU build, first; then the project with its dev tools, then DeepSpeed).
# `make test-latest` runs the suite on the newest releases pyproject.toml admits instead, in its own
# virtualenv; `make lock` does the same and, if the suite passes there, writes them to requirements.lock.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmpo-installed
LOCK := requirements.lock
# torch is not resolved by `make test-latest` / `make lock`: the CPU build on this machine's disk is
# the one a plain `pip install torch==X` gets without several GB of CUDA packages.
TORCH ?= 2.13.0
LATEST ?= .venv-latest
LINT := src tests benchmarks examples

.PHONY: demo test lint bench clean test-latest lock

# The lock's versions exist for the Python it was written on (numpy 2.4, pandas 3 need 3.11+).
define CHECK_PYTHON
import re, sys
want = re.search(r"on Python (\d+\.\d+)", open(sys.argv[1]).read()).group(1)
have = "%d.%d" % sys.version_info[:2]
sys.exit(None if have == want else f"{sys.argv[1]} was written on Python {want} and this is {have}: make it with "
         f"python{want} (rm -r .venv first), or install the ranges instead: pip install -e '.[dev]'")
endef
export CHECK_PYTHON

# DeepSpeed is for the ZeRO-2/3 tests (they run on its CPU accelerator): built against the torch
# installed first (no build isolation, which would fetch another torch) and without its CUDA ops.
# The project itself is built without isolation too, with the locked setuptools.
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "$$CHECK_PYTHON" $(LOCK)
	$(PY) -m pip install -q -c $(LOCK) pip setuptools wheel
	$(PY) -m pip install -q -c $(LOCK) torch
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e ".[dev]"
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c $(LOCK) --no-build-isolation deepspeed
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmpo demo --method dpo --output-dir runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT)

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

# A new virtualenv every time, with the newest releases pyproject.toml admits (and the newest
# DeepSpeed); prints how they differ from the lock, then lint and the whole suite.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	echo "torch==$(TORCH)" > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/pip install -q --upgrade pip setuptools wheel
	$(LATEST)/bin/pip install -q -c $(LATEST)/torch-pin.txt torch
	$(LATEST)/bin/pip install -q -c $(LATEST)/torch-pin.txt --upgrade --upgrade-strategy eager --no-build-isolation -e ".[dev]"
	DS_BUILD_OPS=0 $(LATEST)/bin/pip install -q -c $(LATEST)/torch-pin.txt --upgrade --no-build-isolation deepspeed
	$(LATEST)/bin/pip check
	$(LATEST)/bin/pip freeze --all --exclude-editable > $(LATEST)/resolved.txt
	@echo "== newest releases, where they differ from $(LOCK) (< lock, > newest) =="
	@if [ -f $(LOCK) ]; then diff <(grep -v '^#' $(LOCK) | sort -f) <(sed 's/^torch==\(.*\)+cpu$$/torch==\1/' $(LATEST)/resolved.txt | sort -f) \
		| grep '^[<>]' || echo "(none: the lock is the newest set)"; else cat $(LATEST)/resolved.txt; fi
	$(LATEST)/bin/ruff check $(LINT)
	$(LATEST)/bin/pytest

# Regenerate the lock: the newest set, written only if the whole suite passed on it.
lock: test-latest
	{ echo "# The tested environment: every package make demo / make test / .ci/run install, exact versions."; \
	  echo "# Used as pip constraints (pip install -c $(LOCK) ...). Regenerate with: make lock"; \
	  echo "# (it resolves the newest releases pyproject.toml admits, runs the whole suite on them, and"; \
	  echo "# writes this file only if it passes). Written $$(date -u +%F) on Python $$($(LATEST)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  sed "s/^torch==\(.*\)+cpu$$/torch==\1/" $(LATEST)/resolved.txt; } > $(LOCK)

clean:
	rm -rf runs .pytest_cache .ruff_cache $(LATEST)
