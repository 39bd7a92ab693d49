# sequifier developer and user tasks. `make install demo` on a fresh machine installs
# everything into .venv and runs the demo end to end; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: the CPU wheel these machines carry. An unpinned torch would pull a
# multi-GB CUDA build; pyproject's range is satisfied by this one, so pip keeps it.
TORCH_PIN ?= torch==2.13.0

# install-gpu: torch as pip resolves it by default (on Linux x86_64 PyPI's torch wheel is a
# CUDA build; pick another CUDA version with TORCH_INDEX="--index-url <PyTorch's wheel index
# for it>"), the [gpu] extra, then onnxruntime-gpu alone (it shares its module with onnxruntime).
TORCH_GPU_PIN ?= torch==2.13.0
TORCH_INDEX ?=
ORT_GPU ?= onnxruntime-gpu>=1.18

.PHONY: install install-gpu gpu-smoke test test-full demo lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev,sweep,slurm,plot,mlflow]'
	touch $@

install-gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_INDEX) $(TORCH_GPU_PIN)
	$(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch ' + torch.__version__ + ' in $(VENV) is a CPU build: remove $(VENV) (or pip install --force-reinstall torch from a CUDA wheel index) and run make install-gpu again')"
	$(PY) -m pip install --quiet -e '.[dev,sweep,slurm,plot,mlflow,gpu]'
	$(PY) -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu
	$(PY) -m pip install --quiet '$(ORT_GPU)'
	$(PY) -c "import onnxruntime as o; p = o.get_available_providers(); print('onnxruntime', o.__version__, p); assert 'CUDAExecutionProvider' in p"
	touch $(VENV)/.installed $@  # `make test` must not reinstall the CPU onnxruntime beside it

# the 5-minute GPU check (docs/gpu.md); exits at once on a machine without CUDA
gpu-smoke:
	PYTHON=$(PY) bash bench/gpu_smoke.sh

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
