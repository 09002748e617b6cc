# make run: the server on :5000 with its embedded Redis (ARGS="--reset-demo ...": more flags).
# make test: the test suite.
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench fuzz lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[$*]'
	touch $@

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

run: $(VENV)/.installed-base
	$(BIN)/python seckill_server.py --port 5000 $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Coverage-guided fuzzing of the HTTP parser (atheris); FUZZ_ARGS=-max_total_time=600 for longer.
fuzz: $(VENV)/.installed-dev
	$(BIN)/python -m fuzz.fuzz_parser $(or $(FUZZ_ARGS),-max_total_time=60)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) seckill-data .pytest_cache .mypy_cache .ruff_cache
