# `make demo` and `make test` each create .venv when it is missing, install macasr into it
# (editable, with the extras they need) and run. A stamp file per extra set makes re-runs quick;
# editing pyproject.toml reinstalls.

PYTHON ?= python3
VENV ?= .venv
# A range in pyproject admits this; pinning it here picks the wheel that installs fastest.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/macasr demo

test: $(VENV)/.installed-dev,demo
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
