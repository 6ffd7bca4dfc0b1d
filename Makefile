# One-word entry points. `make demo` and `make test` set everything up first (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean devnet-up devnet-down

setup: node_modules/.stamp $(VENV)/.stamp

node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@test -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil || { echo "anvil binary missing from @foundry-rs/anvil"; exit 1; }
	@touch $@

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/keeper demo

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check keeper tests bench

bench: setup  # smoke size (1,000 borrowers); `make bench FULL=1` for 1,000 / 10,000 / 100,000
	$(BIN)/python bench/run_all.py $(if $(FULL),--full)

devnet-up: setup
	$(BIN)/keeper devnet up

devnet-down: setup
	$(BIN)/keeper devnet down

clean:
	rm -rf .cache .devnet .pytest_cache
