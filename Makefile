# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# Two cores: one intra-op thread per worker process keeps PyTorch predictable.
export OMP_NUM_THREADS ?= 2

.PHONY: venv install install-test test test-fast lint demo bench clean

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

test: install-test
	$(VENV)/bin/ruff check autodeeplab tests benchmarks
	$(PY) -m pytest -q

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

lint: install-test
	$(VENV)/bin/ruff check autodeeplab tests benchmarks
	$(VENV)/bin/ruff format --check autodeeplab tests benchmarks

demo: install
	$(VENV)/bin/autodeeplab demo --output runs/demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
