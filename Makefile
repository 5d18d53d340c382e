# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

# torch is pinned and installed before the package: here the pin resolves to the local CPU
# wheel, where an unpinned torch would pull several GB of CUDA packages.
$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/ponder demo

test: $(VENV)/.test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
