# softmaso: `make smoke` runs the main job offline, `make test` runs lint and the test suite.
# Both create .venv (from the python3 on PATH) and install the package into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: smoke test lint clean

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

lint: $(STAMP)
	$(BIN)/ruff check softmaso tests
	$(BIN)/ruff format --check softmaso tests

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
