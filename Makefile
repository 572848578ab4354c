# `make run`, `make test` and `make test-fast` do all the set-up on a fresh machine: a .venv, the pinned packages,
# the app or the tests. VENV=/path/to/venv uses an existing environment instead; add
# `-o /path/to/venv/.runtime-installed -o /path/to/venv/.dev-installed` to use it as it is, installing nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
PYTEST_ARGS ?=
# The fast tier's parallel workers (pytest-xdist): one per core.
FAST_WORKERS ?= auto
# The whole suite's workers: two, as on the CI machine (each worker loads the shipped models).
TEST_WORKERS ?= 2

.PHONY: run test test-fast install benchmark benchmark-threads benchmark-dataset lint clean

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

# The whole suite, what CI runs (.ci/run): everything but the browser tests spread over the cores, then the browser
# tests one at a time (each drives a server and Chromium, and times what a person would wait for).
test: $(DEV)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not browser" -n $(TEST_WORKERS) $(PYTEST_ARGS)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m browser $(PYTEST_ARGS)

# The edit-test loop: every test marked neither `slow` nor `browser`, spread over the cores (docs/testing.md).
test-fast: $(DEV)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not browser" -n $(FAST_WORKERS) $(PYTEST_ARGS)

benchmark: $(RUNTIME)
	$(BIN)/python scripts/benchmark.py

benchmark-threads: $(RUNTIME)
	$(BIN)/python scripts/benchmark_threads.py

benchmark-dataset: $(DEV)
	$(BIN)/python scripts/benchmark_dataset.py

lint: $(DEV)
	$(BIN)/ruff check covid_models scripts pages tests streamlit_app.py

clean:
	rm -rf .venv .pytest_cache test-artifacts  # only the default venv: never one named by VENV=
