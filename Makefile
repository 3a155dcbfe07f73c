# Every target sets itself up: a fresh machine needs only python3 (3.11+) and make.
#   make demo   .venv with what sa1b needs to run (about 140 MB: numpy, Pillow, pycocotools)
#   make test   adds the linters, pytest and the webdataset library; torch only with WIDS=1
#   make bench  adds aria2c, nginx, xxhsum and curl (apt-get) for the baselines
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	@# byte-compile once: start-up matters, and PYTHONDONTWRITEBYTECODE may be set
	$(BIN)/python -m compileall -q sa1b_cli >/dev/null
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# wids (the webdataset library's indexed reader) imports torch; only its one test needs it,
	@# so only WIDS=1 (as .ci/run sets) installs it, and that test then may not skip
	if [ -n "$(WIDS)" ]; then $(BIN)/python -m pip install --quiet '$(TORCH)'; fi
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/python -m sa1b_cli.devtools.demo

lint: $(VENV)/.dev
	$(BIN)/ruff check sa1b_cli tests
	$(BIN)/ruff format --check sa1b_cli tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.dev
	@command -v nginx >/dev/null && command -v aria2c >/dev/null && command -v xxhsum >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      nginx-light aria2 xxhash curl)
	@# sa1b as installed: sources edited since the venv was made would otherwise be
	@# compiled again in every timed run when PYTHONDONTWRITEBYTECODE is set
	$(BIN)/python -m compileall -q sa1b_cli >/dev/null
	$(BIN)/python -m sa1b_cli.devtools.bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache demo-root
