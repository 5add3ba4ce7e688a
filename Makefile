# Two commands, each doing its own set-up on a fresh machine (Python 3.10+):
#   make demo   an evolution run on the embedded default (CPU, stdlib corpus, offline operators)
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install

$(BIN)/evo: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch 2.13.0 is a CPU build on the project's machines; a newer torch may be a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.4"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/evo

install: $(BIN)/evo

demo: install
	$(BIN)/evo run

test: install
	$(BIN)/python -m pytest -q -rs
