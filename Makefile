# torch is pinned to the CPU build on the install path: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet "torch==2.13.0" -e ".[test,peers,docs]"

.PHONY: install demo test test-fast lint docs

install:
	$(PIP_INSTALL)

demo: install
	$(PYTHON) -m surfflows.cli run configs/demo.yaml

# every test, the slow CHGNet and jobflow-remote runner tests included, then the docs site
test: install
	SURFFLOWS_TORCH_THREADS=1 $(PYTHON) -m pytest -n 2 -q
	$(MAKE) --no-print-directory docs

# the documentation site into site/; --strict fails on a broken link or a stale API reference
docs:
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

# the quick ones only, while iterating
test-fast:
	SURFFLOWS_TORCH_THREADS=1 $(PYTHON) -m pytest -n 2 -q -m "not slow"

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
