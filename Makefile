# imgcls — the two commands a fresh machine needs:
#   make demo   set up, train configs/quickstart.yaml on Fashion-MNIST, evaluate once on the test set, write a report
#   make test   set up and run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/quickstart.yaml
# Debian packages providing the embedded data: Fashion-MNIST and WordNet (for taxonomies)
DEB_PACKAGES := dataset-fashion-mnist wordnet-base wordnet-sense-index

.PHONY: demo test install data lint bench clean

demo: install data
	$(VENV)/bin/imgcls train $(CONFIG) $(ARGS)

test: install data
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# Install the Debian data packages when they are missing and apt is usable (root or password-less sudo).
data:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	  echo "note: could not install$$missing (needs root); Fashion-MNIST will be downloaded if possible"; exit 0; fi; \
	if command -v apt-get >/dev/null; then \
	  (DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	   ($$SUDO apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null)) \
	  && echo "installed$$missing" || echo "note: apt-get could not install$$missing"; \
	fi

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
