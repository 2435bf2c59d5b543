# One venv for everything; torch/torchvision pinned to the builds on this machine's disk.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install bytecode test test-data lint demo bench clean

# uv (from PyPI, into the venv) installs the same pinned wheels faster than pip: the CUDA build
# of torch is 5.5 GB unpacked (on a Zen 5 EPYC, 2026-12-05: 16 s against pip's 46 s; pip also
# compiles every module's bytecode, which uv leaves to the `bytecode` step below, 8 s).
# Where uv cannot be installed, pip does it all.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	if $(BIN)/pip install -q uv; then inst="$(BIN)/uv pip install -q --python $(BIN)/python"; \
	else inst="$(BIN)/pip install -q"; fi; \
	$$inst $(TORCH) && $$inst -e '.[test]'
	$(MAKE) --no-print-directory bytecode
	touch $(STAMP)

# Bytecode for what mvq's commands import, written once into the venv. uv (unlike pip) does not
# compile at install, and where PYTHONDONTWRITEBYTECODE is set (this project's machines) every
# process would compile torch's sources again: importing the demo took 6.8 s instead of 3.2 s
# (idle Xeon, 2026-12-05), in each of the demo's three processes and each CLI test. This step
# takes 8 s; compiling all of site-packages (uv's --compile-bytecode) took 31 s.
WARM := mvq.cli mvq.experiments.demo mvq.experiments.sweep mvq.eval.evaluate mvq.report.page \
	mvq.report.viz mvq.training.prior_job
bytecode:
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c \
	  "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $(WARM)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

CHROMIUM := /usr/bin/chromium

# Debian's chromium opens `mvq report` pages headless in the tests; they are skipped without it.
$(CHROMIUM):
	-(apt-get update -q && apt-get install -y -q chromium) >/dev/null 2>&1 || \
	  echo "chromium not installed via apt; the browser tests of mvq report will be skipped"


FMNIST := /usr/share/datasets/fashion-mnist

# Fashion-MNIST from Debian's package when apt works; otherwise mvq downloads it (torchvision).
$(FMNIST):
	-(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 || \
	  echo "dataset-fashion-mnist not installed via apt; mvq will download Fashion-MNIST"

# The real-data tests need Fashion-MNIST where mvq looks for it, got as the demo gets it:
# Debian's package, else a download into mvq's user cache. Tests that still cannot read it
# fail with the reason; MVQ_SKIP_REAL_DATA=1 skips them (and skips getting the data here).
ifeq ($(filter-out 0,$(MVQ_SKIP_REAL_DATA)),)
TEST_DATA := test-data
endif

test-data: $(STAMP) $(FMNIST)
	@$(BIN)/python -c "from mvq.data import build_dataset as b; \
	  [b('fashion_mnist', None, s, download=True) for s in ('train', 'val')]" 2>/dev/null || \
	  echo "could not get Fashion-MNIST: the real-data tests will fail and say why"

test: $(STAMP) lint $(TEST_DATA) $(CHROMIUM)
	OMP_NUM_THREADS=2 $(BIN)/pytest

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
