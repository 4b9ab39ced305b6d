# m2s — top-level Makefile. Stage pipelines live in pipelines/*.mk.
PYTHON ?= python3
VENV ?= .venv
# Users override the torch build, e.g. `make setup TORCH="torch==2.5.1 --index-url ..."`.
TORCH ?= torch==2.13.0
# Set MINKOWSKI=0 to skip building MinkowskiEngine (the `torch` backend needs nothing compiled).
MINKOWSKI ?= 1
PY := $(VENV)/bin/python
M2S := $(VENV)/bin/m2s

.PHONY: setup test test-fast clean-venv
setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e '.[dev]'
	@if [ "$(MINKOWSKI)" = "1" ]; then bash scripts/install_minkowski.sh $(PY); else echo "MINKOWSKI=0: skipping MinkowskiEngine"; fi

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)

-include pipelines/*.mk
