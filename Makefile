# softmaso: `make smoke` runs the main job offline, `make test` runs lint and the test suite.
# Both create .venv (from the python3 on PATH) and install the package into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: smoke test lint clean gpu-wheels fashion

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

smoke: $(STAMP)
	$(BIN)/softmaso reproduce all --smoke --devices cpu
	@echo "SMOKE outputs (synthetic stand-in data, not the paper's numbers):"
	@echo "  theory:  results/smoke/theory.json"
	@echo "  figure:  results/smoke/figures/figure1.{png,pdf,csv}"
	@echo "  table 2: results/smoke/table2/table.{md,tex,csv}, curves in results/smoke/table2/figures/"
	@echo "  gs-cifar100: results/smoke/gs-cifar100/table.md"
	@echo "  fashion: results/smoke/fashion/table.md (real data: make fashion)"
	@echo "  table2-fashion, gs-fashion: results/smoke/{table2-fashion,gs-fashion}/table.md"
	@echo "  activations, ortho-methods: results/smoke/{activations,ortho-methods}/table.md"

# The real Fashion-MNIST grid (results/fashion/), offline from Debian's dataset-fashion-mnist
# (apt-get install dataset-fashion-mnist): 45-55 minutes on 2 CPU cores.
# results/fashion/ holds the committed runs (finished, so reproduce would only remake the
# table): this trains them again beside it, for comparison.
FASHION_FROM ?= /usr/share/datasets/fashion-mnist
FASHION_RESULTS ?= results/fashion-rerun
fashion: $(STAMP)
	$(BIN)/softmaso data fetch fashion-mnist --from $(FASHION_FROM)
	$(BIN)/softmaso reproduce fashion --devices cpu,cpu --threads 1 --results $(FASHION_RESULTS)

lint: $(STAMP)
	$(BIN)/ruff check softmaso tests
	$(BIN)/ruff format --check softmaso tests

test: lint
	$(BIN)/python -m pytest

# Wheels a lent GPU machine lacks (it has torch, typer, rich, pandas, ... but no network), for
# Python 3.12 there: carry .whl and run benchmarks/gpu.sh on it (see benchmarks/RESULTS.md).
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/python -m pip list --format=freeze | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|submitit)==')

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
