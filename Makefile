# nasrun developer targets. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-gpu gpu-check demo lint bench bench-train bench-bo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install nasrun with its dev tools (editable)

test: install  ## the fast test suite (minutes, CPU)
	$(PY) -m pytest -q

test-slow: install  ## the long end-to-end tests
	$(PY) -m pytest -q -m slow

test-gpu: install  ## the CUDA tests: bf16, channels_last, torch.compile (needs a GPU)
	$(PY) -m pytest -q -m gpu

gpu-check: install  ## on a GPU machine: CUDA tests + search/retrain step benchmarks, one JSON summary (< 8 min)
	scripts/gpu_check.sh

demo: install  ## a real, small DARTS search + retrain on the bundled digits data
	$(VENV)/bin/nasrun experiment=demo

lint: install  ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check nasrun hydra_plugins tests scripts docs/benchmarks
	$(VENV)/bin/ruff format --check nasrun hydra_plugins tests scripts docs/benchmarks
	$(VENV)/bin/mypy

bench: install  ## DARTS search-step benchmark on synthetic data (docs/benchmarks/darts_step.md)
	$(PY) scripts/bench_search.py --search darts --channels 8 --layers 5 --batch-size 16 --image-size 32 --steps 5

bench-train: install  ## retraining-step benchmark, darts_v2 at 36 channels x 20 cells (docs/benchmarks/retrain_step.md)
	$(PY) scripts/bench_train.py --genotype darts_v2 --channels 36 --layers 20 --batch-size 96

bench-bo: install  ## BO benchmark: nasrun vs Sobol vs Optuna GP/TPE (slow; docs/benchmarks/bo.md)
	$(PY) -m pip install -q -e '.[bench]' --config-settings editable_mode=compat
	$(PY) scripts/bench_bo.py --seeds 20 --budget 50 --functions branin,hartmann6 --methods nasrun,sobol,optuna-gp,optuna-tpe --q 1,4 --out outputs/bench_bo.jsonl
