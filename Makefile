# torch is pinned to the CPU build on the install path: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet "torch==2.13.0" -e ".[test,peers]"

.PHONY: install demo test test-fast lint

install:
	$(PIP_INSTALL)

demo: install
	$(PYTHON) -m surfflows.cli run configs/demo.yaml

# every test, the slow CHGNet and jobflow-remote runner tests included
test: install
	SURFFLOWS_TORCH_THREADS=1 $(PYTHON) -m pytest -n 2 -q

# the quick ones only, while iterating
test-fast:
	SURFFLOWS_TORCH_THREADS=1 $(PYTHON) -m pytest -n 2 -q -m "not slow"

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
