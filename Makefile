# Two set-up commands: `make demo` and `make test`. Each creates or refreshes .venv on its own.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The exact pin matters: this machine's pip resolves it to a local CPU wheel.
TORCH := torch==2.13.0

.PHONY: demo test test-slow test-gpu lint bench bench-gpu clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[train]'
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# DEMO_ARGS=--quick runs the same chain on tiny sizes.
demo: $(VENV)/.base
	$(VENV)/bin/ranker demo $(DEMO_ARGS)

test: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow and not gpu"

test-slow: $(VENV)/.dev
	$(PY) -m pytest -q -m slow

test-gpu: $(VENV)/.dev
	$(PY) -m pytest -q -m gpu

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ranker serving training sim cli

$(VENV)/.bench: $(VENV)/.dev
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench
	$(PY) -m benchmarks.run_all

# On a machine with a CUDA device: serving latency, batched throughput, training step (docs/benchmarks.md).
bench-gpu: $(VENV)/.dev
	$(PY) -m benchmarks.gpu

clean:
	rm -rf out .pytest_cache
