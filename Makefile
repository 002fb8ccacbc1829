# The two commands a new user needs: `make demo` and `make test`.
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  ?= python3
STAMP   := $(VENV)/.installed

.PHONY: demo test lint ui bench install

install: $(STAMP)

# The project lives in its own virtual environment, as a Dagster code location does.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/order-pipeline demo $(ARGS)

ui: $(STAMP)
	$(BIN)/order-pipeline ui --config data/demo/order_pipeline.yaml

# Format, lint, the import layers (docs/architecture.md) and types, then the tests.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pyright

test: $(STAMP) lint
	scripts/test-services
	$(BIN)/pytest $(ARGS)

bench: $(STAMP)
	scripts/test-services
	$(BIN)/python benchmarks/bench_pipeline.py $(ARGS)
