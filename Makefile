# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv if it is missing and
# (re)installs the project only when pyproject.toml, constraints.txt or this file changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.confide-installed
PYTEST_ARGS ?=

.PHONY: install test test-fast demo demo-fast bench clean

# Ray (an optional extra for users) is installed here so the test suite runs the Ray executor too.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[demo,dev,ray]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit tests only (tiny random models), for a quick loop while developing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/confide demo

demo-fast: $(STAMP)
	$(BIN)/confide demo --fast

bench: $(STAMP)
	$(BIN)/python benchmarks/he.py --quick
	$(BIN)/python benchmarks/dp.py --quick

clean:
	rm -rf $(VENV) demo-out .pytest_cache
