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
	@touch $@ $(VENV)/.core $(VENV)/.engine

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $@ $(VENV)/.test $(VENV)/.core

$(VENV)/.engine: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[engine]'
	@touch $@ $(VENV)/.core

# make a model, start a 3-replica fleet with one injected fault, replay the Azure LLM trace
# for about a minute (INFDEBUG_DEMO_SECONDS), ingest the traces into chDB, print stats.
demo: $(VENV)/.engine
	$(BIN)/python -m infdebug.demo

test: $(VENV)/.test lint typecheck unit

lint: $(VENV)/.test
	$(BIN)/ruff check infdebug tests bench sample_logs

typecheck: $(VENV)/.test
	$(BIN)/mypy infdebug

unit: $(VENV)/.test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.bench
	$(BIN)/python bench/ingest.py

sample-logs: $(VENV)/.engine
	$(BIN)/python -m infdebug.demo --seconds 40 --clean --deployment-of r1=baseline --deployment-of r2=baseline \
		--deployment-of r3=baseline --out sample_logs/baseline --no-ingest
	$(BIN)/python -m infdebug.demo --seconds 40 --inject r2:slow=1.5 --inject r3:double-bos --deployment-of r1=canary \
		--deployment-of r2=canary --deployment-of r3=canary --out sample_logs/canary --no-ingest --base-port 8200
	rm -rf sample_logs/*/logs

clean:
	rm -rf $(VENV) .infdebug .pytest_cache .mypy_cache .ruff_cache
