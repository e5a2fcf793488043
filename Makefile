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
	$(BIN)/softmaso theory --json results/smoke/theory.json
	$(BIN)/softmaso plot-activations --out results/smoke/figures
	@echo "smoke outputs: results/smoke/theory.json, results/smoke/figures/figure1.{png,pdf,csv}"

lint: $(STAMP)
	$(BIN)/ruff check softmaso tests
	$(BIN)/ruff format --check softmaso tests

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
