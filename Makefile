# make demo / make test: each creates .venv and installs the project itself.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean bench lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A regular (not editable) install: an editable one hides the top-level
# twisted/plugins dropin from twistd.
install: $(BIN)/python
	$(BIN)/pip install --quiet ".[test]"

demo: install
	$(BIN)/p2p demo

test: install
	$(BIN)/python -m pytest -q

lint: $(BIN)/python
	$(BIN)/pip install --quiet ".[test,lint]"
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: install
	cd bench && ../$(BIN)/python join.py && ../$(BIN)/python search.py && ../$(BIN)/python transfer.py && ../$(BIN)/python churn.py

clean:
	rm -rf $(VENV) build src/*.egg-info
