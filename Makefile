# The README's commands. `make demo` and `make test` each install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The real distributions. The test-only plugins (tests/canary) are installed by the test
# session itself, into a private directory (conftest.py), never into .venv.
DISTS := core $(wildcard plugins/*)
DEMO_DIR ?= /tmp/collective-demo

.PHONY: install demo test test-deps system-deps lint bench dist check-dists clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## .venv with every distribution editable, plus dev tools
	@$(BIN)/pip uninstall -q -y collective-test-canary 2>/dev/null || true
	$(BIN)/pip install -q $(addprefix -e ./,$(DISTS)) \
	    "pytest>=8" pytest-timeout "hypothesis>=6" ruff build twine psutil packaging \
	    docker-systemctl-replacement==1.7.1097

system-deps:  ## Debian packages the real-component tests need (root or sudo)
	@bash scripts/system-deps.sh

demo: install  ## a local fleet of 3 on the embedded broker, driven by mco
	@bash scripts/demo.sh $(DEMO_DIR)

test-deps: system-deps install  ## Python packages that build against system-deps' libraries
	$(BIN)/pip install -q "libvirt-python>=9"  # the xen agent's libvirt tests (libvirt-dev)

test: test-deps  ## the whole test suite, both brokers
	$(BIN)/ruff check core tests bench $(wildcard plugins)
	$(BIN)/python -m pytest

dist: install  ## a wheel and an sdist of every distribution in dist/, checked with twine
	@bash scripts/dist.sh dist

bench: install
	$(BIN)/python bench/run.py

check-dists: install
	@bash scripts/check-dists.sh

clean:
	rm -rf $(VENV) dist build
