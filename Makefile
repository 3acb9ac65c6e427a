# medpg: `make demo` and `make test` each create the virtual environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: on machines without a GPU this is a CPU build (see README).
TORCH  ?= torch==2.13.0
# The demo keeps its embedded PostgreSQL inside the checkout.
DEMO_DATA_DIR ?= $(CURDIR)/.medpg

.PHONY: setup demo test lint bench clean-demo

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	MEDPG_DATA_DIR="$(DEMO_DATA_DIR)" MEDPG_MODEL_PROFILE=minilm PATH="$(CURDIR)/$(BIN):$$PATH" \
		bash examples/demo.sh

test: $(BIN)/.installed
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check medpg workers tests benchmarks
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/ingest.py --docs 100000 --repeat 3 --out benchmarks/results/ingest.md

clean-demo:
	rm -rf "$(DEMO_DATA_DIR)"
