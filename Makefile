# Two commands do all the set-up on a fresh machine:  make demo   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test demo demo-tiny clean

# Idempotent: reinstalls only when pyproject.toml changes. torch is pinned exactly, so pip never pulls a second one.
# The harness extra is part of the test install: CI fails, rather than skips, when it is missing.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[test,harness]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q --durations=15

# The main job on the embedded defaults: a private local Ray, MLflow in ./mlflow.db, the real model and data
# (fetched and built once into ~/.cache/dyrank; both steps are no-ops when already there).
demo: install
	$(BIN)/dyrank models fetch smollm2-135m-instruct
	$(BIN)/dyrank data build countries
	$(BIN)/dyrank run examples/smollm2-countries.yaml

# The same pipeline on a tiny random model: a one-minute smoke run.
demo-tiny: install
	$(BIN)/dyrank run examples/tiny.yaml

clean:
	rm -rf runs reports mlruns
