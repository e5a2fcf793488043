# softmaso: `make smoke` runs the main job offline, `make test` runs lint and the test suite.
# Both create .venv (from the python3 on PATH) and install the package into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: smoke test lint clean gpu-wheels fashion slurm-test

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

# The real-SLURM tests (tests/test_slurm_cluster.py; `make test` skips them): a one-node cluster
# on this machine (scripts/slurm-cluster.sh: installs slurm-wlm if absent, as root, and keeps its
# files in $(SLURM_DIR)), the tests, then the cluster stopped whatever they said.
SLURM_DIR ?= /tmp/softmaso-slurm
slurm-test: $(STAMP)
	SOFTMASO_SLURM_DIR=$(SLURM_DIR) scripts/slurm-cluster.sh start
	SOFTMASO_SLURM=1 SOFTMASO_SLURM_DIR=$(SLURM_DIR) SLURM_CONF=$(SLURM_DIR)/slurm.conf \
	  $(BIN)/python -m pytest -p no:cacheprovider tests/test_slurm_cluster.py; \
	  status=$$?; SOFTMASO_SLURM_DIR=$(SLURM_DIR) scripts/slurm-cluster.sh stop; exit $$status

# Wheels a lent GPU machine lacks (it has torch, typer, rich, pandas, ... but no network), for its
# Python (GPU_PYTHON): pydantic and submitit with what they need (pydantic-core, annotated-types,
# typing-extensions, typing-inspection, cloudpickle), about 2.8 MB, downloaded alone (no venv,
# no torch), at the versions .venv runs where there is one. Carry .whl and run
# benchmarks/gpu-first.sh there (see benchmarks/RESULTS.md).
GPU_PYTHON ?= 3.12
GPU_WHEELS := pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|submitit|cloudpickle
gpu-wheels:
	$(PYTHON) -m pip download --quiet --only-binary=:all: --python-version $(GPU_PYTHON) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$( (test -x $(BIN)/python && $(BIN)/python -m pip list --format=freeze | \
	    grep -iE '^($(GPU_WHEELS))==') || echo pydantic submitit)
	ls -l .whl

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
