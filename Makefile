# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# The suite starts multi-process runs (2 ranks on 2 cores): one intra-op thread per process
# keeps PyTorch from oversubscribing the cores. The demo uses the library's own choice.
TEST_THREADS ?= 1

.PHONY: venv install install-test install-3d test test-fast lint demo demo-3d bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/activate
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/activate
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(VENV)/.installed $@

venv: $(VENV)/bin/activate
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-3d: $(VENV)/.installed-3d

$(VENV)/.installed-3d: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/activate
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[3d]"
	touch $(VENV)/.installed $@

test: install-test
	$(VENV)/bin/ruff check autodeeplab tests benchmarks
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q

test-fast: install-test
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -m "not slow"

lint: install-test
	$(VENV)/bin/ruff check autodeeplab tests benchmarks
	$(VENV)/bin/ruff format --check autodeeplab tests benchmarks

# The whole pipeline on the synthetic data set: search -> decode -> retrain -> evaluate ->
# predict -> runs/demo/report.html (thread counts come from the demo configs).
demo: install
	$(VENV)/bin/autodeeplab demo --output runs/demo --overwrite

# The same on procedural volumes (synthetic3d) -> runs/demo3d/report.html; needs the 3d extra.
demo-3d: install-3d
	$(VENV)/bin/autodeeplab demo --3d --output runs/demo3d --overwrite

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
