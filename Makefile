# `make run` and `make test` do all the set-up on a fresh machine: a .venv, the pinned packages, the app or the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
PYTEST_ARGS ?=

.PHONY: run test install benchmark benchmark-threads benchmark-dataset lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(DEV): $(RUNTIME) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(RUNTIME)

# The CPU policy (OpenMP passive waiting, glibc malloc thresholds) is applied by streamlit_app.py itself through
# covid_models.runtime, so that Streamlit Community Cloud, which starts the process, gets it too.
run: $(RUNTIME)
	$(BIN)/streamlit run streamlit_app.py

test: $(DEV)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

benchmark: $(RUNTIME)
	$(BIN)/python scripts/benchmark.py

benchmark-threads: $(RUNTIME)
	$(BIN)/python scripts/benchmark_threads.py

benchmark-dataset: $(DEV)
	$(BIN)/python scripts/benchmark_dataset.py

lint: $(DEV)
	$(BIN)/ruff check covid_models scripts pages tests streamlit_app.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
