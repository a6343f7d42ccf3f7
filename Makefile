# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes, the data package and
# the demo shards are made only when missing, and a finished demo run is shown, not retrained.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST := $(FMNIST_DIR)/train-images-idx3-ubyte.gz
DEMO_SHARDS := shards/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEEPSPEED := $(shell sed -n 's/.*"deepspeed==\([0-9.]*\)".*/\1/p' pyproject.toml)
# Ray: bind loopback only; DeepSpeed: the CPU accelerator on hosts without a GPU.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export DS_ACCELERATOR ?= cpu
export RAY_DEDUP_LOGS ?= 1
# Bytecode is cached (a machine with PYTHONDONTWRITEBYTECODE set recompiles every module of torch,
# Ray and DeepSpeed in every process: each Ray worker then starts ~2x slower).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install data shards test demo mlflow-ui clean

# DeepSpeed is rebuilt with its shm_comm op compiled ahead of time: otherwise every fresh
# process JIT-compiles it on first `deepspeed.initialize` (30-60 s, again inside Ray workers).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip wheel
	$(VENV)/bin/pip install -q -e '.[test]'
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(VENV)/bin/pip install -q --no-cache-dir --no-build-isolation \
	    --no-deps --force-reinstall deepspeed==$(DEEPSPEED)
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST, the real data set of the demo and the tests (Debian package).
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FMNIST)

# The full Fashion-MNIST: 55,000 train, a stratified 5,000-image val split (where budget mode
# calibrates the test-time threshold), the 10,000 test images.
$(DEMO_SHARDS)/val/manifest.json: | $(VENV)/.installed $(FMNIST)
	$(PY) -m data_shards fashion-mnist --src $(FMNIST_DIR) --out $(DEMO_SHARDS) --val-split 5000 --force

shards: $(DEMO_SHARDS)/val/manifest.json

test: install data
	$(PY) -m pytest -q

demo: install shards
	$(PY) -m cascade_dist.train --config demo
	@echo
	@echo "Open the MLflow UI:  make mlflow-ui   (then browse http://127.0.0.1:5000)"

mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
	    --workers 1 --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
