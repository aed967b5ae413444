# The two commands in the README do all set-up on a fresh machine.
#   make demo   create .venv, install, generate the synthetic set, train, evaluate, print the run folder
#   make test   create .venv if needed, install, lint, run the fast suite, then the real-size tier
#   make test-fast   the same without the real-size tier (pytest -m "not real")
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-real lint format venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 resolves to the local CPU wheel; a bare "torch" could pull GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,onnx]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tools benchmarks
	$(VENV)/bin/ruff format --check src tests tools benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests tools benchmarks
	$(VENV)/bin/ruff check --fix src tests tools benchmarks

test: test-fast test-real

test-fast: lint
	$(PY) -m pytest -n 2 -m "not real" tests

# r50 at 800 px and photo-sized images through every command and fast path (tests marked "real").
test-real: $(STAMP)
	$(PY) -m pytest -n 2 -m "real and not alone" tests
	$(PY) -m pytest -m alone tests

demo: $(STAMP)
	$(VENV)/bin/fpn demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
