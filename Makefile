# One venv for everything; torch/torchvision pinned to the builds on this machine's disk.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	OMP_NUM_THREADS=2 $(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m mvq.demo --out runs/demo

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/quantizers.py
	$(BIN)/python benchmarks/mh_dropout.py

clean:
	rm -rf $(VENV) runs .pytest_cache
