# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs what it needs; re-running skips what is already installed.
PYTHON ?= python3
# The CPU build of torch (a local wheel here); a bare range would pull a CUDA build.
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
export INFDEBUG_HOME ?= $(CURDIR)/.infdebug

.PHONY: demo test lint typecheck unit bench sample-logs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.core

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $@ $(VENV)/.test $(VENV)/.core

demo: $(VENV)/.core
	@echo "== ingesting sample_logs/ into the embedded ClickHouse store at $(INFDEBUG_HOME)"
	$(BIN)/infdebug ingest sample_logs/
	@echo
	$(BIN)/infdebug stats
	@echo
	@echo "Next:"
	@echo "  $(BIN)/infdebug query \"SELECT replica, max(temp_c), groupUniqArrayArray(throttle_reasons) FROM gpu_samples GROUP BY replica\""
	@echo "  $(BIN)/infdebug stats --json"
	@echo "  $(BIN)/infdebug --help"

test: $(VENV)/.test lint typecheck unit

lint: $(VENV)/.test
	$(BIN)/ruff check infdebug tests bench sample_logs

typecheck: $(VENV)/.test
	$(BIN)/mypy infdebug

unit: $(VENV)/.test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.bench
	$(BIN)/python bench/ingest.py

sample-logs: $(VENV)/.core
	$(BIN)/python sample_logs/generate.py

clean:
	rm -rf $(VENV) .infdebug .pytest_cache .mypy_cache .ruff_cache
