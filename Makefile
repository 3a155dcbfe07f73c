# Every target sets itself up: a fresh machine needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# torch only for the wids test (wids imports it); without it that one test skips
	$(BIN)/python -m pip install --quiet '$(TORCH)' || echo "note: no $(TORCH); the wids test will skip"
	@# byte-compile once: start-up matters, and PYTHONDONTWRITEBYTECODE may be set
	@# (not torch: only one test imports it, and it ships files only Python 3.12 parses)
	$(BIN)/python -m compileall -q -j 0 -x '/torch/' sa1b_cli $(VENV)/lib >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sa1b_cli.devtools.demo

lint: $(STAMP)
	$(BIN)/ruff check sa1b_cli tests
	$(BIN)/ruff format --check sa1b_cli tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	@command -v nginx >/dev/null && command -v aria2c >/dev/null && command -v xxhsum >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      nginx-light aria2 xxhash curl)
	@# sa1b as installed: sources edited since the venv was made would otherwise be
	@# compiled again in every timed run when PYTHONDONTWRITEBYTECODE is set (measured:
	@# a run with nothing to fetch took 0.39 s instead of 0.25, a far-CDN run ~2.5 s)
	$(BIN)/python -m compileall -q sa1b_cli >/dev/null
	$(BIN)/python -m sa1b_cli.devtools.bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache demo-root
