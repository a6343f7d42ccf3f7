# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes,
# the data package is installed only when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST := $(FMNIST_DIR)/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data test demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip wheel
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST, the real data set of the demo and the tests (Debian package).
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FMNIST)

test: install data
	$(PY) -m pytest -q

demo: install data
	$(PY) -m cascade_dist.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
