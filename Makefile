# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# The suite starts multi-process runs (2 ranks on 2 cores): one intra-op thread per process
# keeps PyTorch from oversubscribing the cores. The demo uses the library's own choice.
TEST_THREADS ?= 1

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
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q

test-fast: install-test
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -m "not slow"

lint: install-test
	$(VENV)/bin/ruff check autodeeplab tests benchmarks
	$(VENV)/bin/ruff format --check autodeeplab tests benchmarks

# The pipeline stages that exist today: synthetic search -> decoded genotype -> drawing
# (one intra-op thread: measured faster than two on a 2-core machine for this tiny config).
# (Retraining, evaluation and the report join here with `autodeeplab train` / `demo`.)
demo: install
	rm -rf runs/demo
	OMP_NUM_THREADS=1 $(VENV)/bin/autodeeplab search --config configs/search/synthetic.yaml --output runs/demo/search
	$(VENV)/bin/autodeeplab draw runs/demo/search/last.pt --out runs/demo/architecture.png
	@echo "demo outputs in runs/demo: search/genotype.json, search/metrics.jsonl, architecture.png"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
