# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs what it needs; re-running skips what is already installed.
PYTHON ?= python3
# The CPU build of torch (a local wheel here); a bare range would pull a CUDA build.
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
# Every install goes through the lock: exact versions of every package (pip included) that
# `make upgrade-deps` resolved and tested. pyproject.toml keeps lower bounds for library users.
LOCK   := constraints.txt
PIP    := $(BIN)/python -m pip install -q -c $(LOCK)
export INFDEBUG_HOME ?= $(CURDIR)/.infdebug

.PHONY: demo demo-sidecar test lint typecheck unit deps-check bench sample-logs clean upgrade-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.core: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e .
	@touch $@

$(VENV)/.test: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) '$(TORCH)'
	$(PIP) -e '.[test]'
	@touch $@ $(VENV)/.core $(VENV)/.engine

$(VENV)/.bench: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) '$(TORCH)'
	$(PIP) -e '.[test,bench]'
	@touch $@ $(VENV)/.test $(VENV)/.core

$(VENV)/.engine: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) '$(TORCH)'
	$(PIP) -e '.[engine,dashboard]'
	@touch $@ $(VENV)/.core

# make a model, start a 3-replica fleet with one injected fault, replay the Azure LLM trace
# for about a minute (INFDEBUG_DEMO_SECONDS), ingest the traces into chDB, print stats.
demo: $(VENV)/.engine
	$(BIN)/python -m infdebug.demo

# the same fleet with each replica behind an `infdebug sidecar` that writes the traces
demo-sidecar: $(VENV)/.engine
	$(BIN)/python -m infdebug.demo --sidecars

test: $(VENV)/.test deps-check lint typecheck unit

# Every installed distribution is pinned in the lock, at the version installed (a package
# that reached the venv around the lock fails here, not next month).
deps-check: $(VENV)/.test
	$(BIN)/python tools/lockcheck.py $(LOCK)

lint: $(VENV)/.test
	$(BIN)/ruff check infdebug tests bench sample_logs tools

typecheck: $(VENV)/.test
	$(BIN)/mypy infdebug

# Two workers (pytest-xdist), a test file each at a time: module-scoped servers start once.
TEST_WORKERS ?= 2
unit: $(VENV)/.test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(VENV)/.bench
	$(BIN)/python bench/ingest.py

# the demo's model, made afresh (trained to chat, under a minute) so the logs follow today's recipe
sample-logs: $(VENV)/.engine
	$(BIN)/infdebug make-model "$${INFDEBUG_HOME:-.infdebug}/demo/model" --preset small --chat-format llama3 --train
	$(BIN)/python -m infdebug.demo --seconds 40 --clean --deployment-of r1=baseline --deployment-of r2=baseline \
		--deployment-of r3=baseline --out sample_logs/baseline --no-ingest
	$(BIN)/python -m infdebug.demo --seconds 40 --inject r2:slow=1.5 --inject r3:double-bos --deployment-of r1=canary \
		--deployment-of r2=canary --deployment-of r3=canary --out sample_logs/canary --no-ingest --base-port 8200
	rm -rf sample_logs/*/logs

# Re-resolve every dependency (all extras) at its newest release in a scratch venv, write the
# lock, then rebuild .venv from it and run the whole suite: a new release that breaks us
# shows up here, in one commit, not on a fresh machine.
upgrade-deps:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q '$(TORCH)'
	.venv-lock/bin/python -m pip install -q -e '.[test,bench,dashboard]'
	.venv-lock/bin/python tools/lockcheck.py --write $(LOCK)
	rm -rf .venv-lock $(VENV)
	$(MAKE) test

clean:
	rm -rf $(VENV) .infdebug .pytest_cache .mypy_cache .ruff_cache
