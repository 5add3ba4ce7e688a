# Two commands, each doing its own set-up on a fresh machine (Python 3.10+):
#   make demo   an evolution run on the embedded default (CPU, built-in corpus, offline operators)
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install sandbox

$(BIN)/evo: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch 2.13.0 is a CPU build on the project's machines; a newer torch may be a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.4"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/evo

install: $(BIN)/evo sandbox

# bubblewrap is the only sandbox level that seals the eval data from genomes: install it where we may
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || true; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    (sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || true; fi; }
	@command -v bwrap >/dev/null 2>&1 && echo "sandbox: bubblewrap $$(bwrap --version | cut -d' ' -f2)" || \
	  echo "WARNING: bubblewrap could not be installed (no root, no sudo, or no apt): genomes run at a weaker" \
	       "sandbox level that does NOT seal the eval data, isolate files or (at 'none') the network;" \
	       "runs must pass --allow-unsealed and are stamped UNSEALED; the bubblewrap tests are skipped." \
	       "Fix: apt-get install bubblewrap"

demo: install
	@if command -v bwrap >/dev/null 2>&1; then $(BIN)/evo run; else $(BIN)/evo run --allow-unsealed; fi

test: install
	$(BIN)/python -m pytest -q -rs --durations=15
