# sequifier developer and user tasks. `make install demo` on a fresh machine installs
# everything into .venv and runs the demo end to end; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: the CPU wheel these machines carry. An unpinned torch would pull a
# multi-GB CUDA build; pyproject's range is satisfied by this one, so pip keeps it.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test test-full demo lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev,sweep,slurm,plot]'
	touch $@

test: install
	$(PY) -m pytest -q

# also the slow end-to-end checks
test-full: install
	$(PY) -m pytest -q -m ""

demo: install
	$(PY) -m sequifier.demo outputs/demo

lint: install
	$(VENV)/bin/ruff check sequifier tests bench multirun_examples

format: install
	$(VENV)/bin/ruff format sequifier tests bench multirun_examples

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf outputs bench/out .pytest_cache
