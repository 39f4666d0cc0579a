# Two entry points: `make demo` (the synthetic-world demo) and `make test` (lint + tests).
# Both create .venv when it is missing and install torch==2.13.0 (CPU) before the project.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmpo-installed

.PHONY: demo test lint bench clean

# DeepSpeed is for the ZeRO-2/3 tests (they run on its CPU accelerator): built against the torch
# installed first (no build isolation, which would fetch another torch) and without its CUDA ops.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmpo demo --method dpo --output-dir runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
