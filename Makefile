# make demo / make test: each creates .venv and installs the project itself.
# PYTHON: the first of these that is Python 3.11 or newer (or say PYTHON=...).
PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 python3.11 python3 python; do \
	if command -v $$p >/dev/null 2>&1 && \
	   $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
		echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check install clean bench lint

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "make: no Python 3.11 or newer found (tried python3.14 ... python3.11, python3, python); install one, or give it: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A regular (not editable) install: an editable one hides the top-level
# twisted/plugins dropin from twistd.
install: $(BIN)/python
	$(BIN)/pip install --quiet ".[test]"

demo: install
	$(BIN)/p2p demo

# Tests run in parallel processes (pytest-xdist): most of a real-process
# test's time is waiting for its processes, so one more worker than cores
# keeps the cores busy.  JOBS=0 runs them all in this process.
JOBS ?= 3

test: install
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal

# The fast tier: units, byte-level protocols and simulations; no real
# processes, browser or namespaces (tests/conftest.py marks those slow).
check: install
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal -m "not slow"

lint: $(BIN)/python
	$(BIN)/pip install --quiet ".[test,lint]"
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/mypy --strict src/p2pshare/meta
	$(BIN)/mypy --strict src/p2pshare/peer/download

bench: install
	cd bench && ../$(BIN)/python join.py && ../$(BIN)/python search.py && ../$(BIN)/python transfer.py && ../$(BIN)/python swarm.py && ../$(BIN)/python churn.py && ../$(BIN)/python rescan.py && ../$(BIN)/python commands.py

clean:
	rm -rf $(VENV) build src/*.egg-info
