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

FMNIST := /usr/share/datasets/fashion-mnist

# Fashion-MNIST from Debian's package when apt works; otherwise mvq downloads it (torchvision).
$(FMNIST):
	-(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 || \
	  echo "dataset-fashion-mnist not installed via apt; mvq will download Fashion-MNIST"

demo: $(STAMP) $(FMNIST)
	OMP_NUM_THREADS=2 $(BIN)/mvq demo --out runs/demo

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/quantizers.py
	$(BIN)/python benchmarks/mh_dropout.py
	$(BIN)/python benchmarks/tokenizers.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/eval.py

clean:
	rm -rf $(VENV) runs .pytest_cache
