# histofuse: `make demo` installs and runs the demo cohort; `make test` runs the tests.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := resources/demo
METHODS_DIR := resources/demo_methods
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
# pip's notes about this machine's empty local package indexes are noise.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: install demo demo-methods demo-data demo-methods-data test test-slurm lint bench-quick bench-gpu lock clean

install: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 come from wheels on disk; every version is pinned in
# requirements/lock.txt and installed without resolution (--no-deps) because tiatoolbox 2.1.3
# declares torch<2.13, which the available torchvision build cannot satisfy (see README).
$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24" $(QUIET_PIP)
	$(BIN)/pip install --quiet --no-deps -r requirements/lock.txt $(QUIET_PIP)
	$(BIN)/pip install --quiet "setuptools>=68" wheel $(QUIET_PIP)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . $(QUIET_PIP)
	$(BIN)/python -c "import histofuse, torch, timm, openslide; from tiatoolbox.tools.tissuemask import OtsuTissueMasker"
	touch $(STAMP)

demo-data: $(DEMO_DIR)/slides.tsv

# The cohort is deterministic: written once, rewritten only when histofuse is reinstalled.
$(DEMO_DIR)/slides.tsv: $(STAMP)
	$(BIN)/histofuse demo --out $(DEMO_DIR)

demo: demo-data
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)
	@echo "Report: results/report.html"

# The methods cohort (slides, genomics and clinical data complementary), written once like the demo's.
demo-methods-data: $(METHODS_DIR)/slides.tsv

$(METHODS_DIR)/slides.tsv: $(STAMP)
	$(BIN)/histofuse demo --kind methods --out $(METHODS_DIR)

# M2F, KSF and bidirectional distillation with their comparators, the missing-rate evaluation and
# the modality ablation, on the methods cohort.
demo-methods: demo-methods-data
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) \
		--configfile config/config.yaml config/examples/demo_methods.yaml
	@echo "Report: results/demo_methods/report.html"

# The default run leaves out the tests marked slow (whole-pipeline reruns, published-cohort and
# bad-slide end-to-end runs); `make test-all` runs every test.
PYTEST_ARGS ?= -m "not slow"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest

test-slurm: $(STAMP)
	$(BIN)/python -m pytest -m slurm

# Style and types of the package (settings in pyproject.toml), the workflow's formatting, and
# Snakemake's own checks on the committed test configuration (.test/).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks workflow/scripts
	$(BIN)/mypy
	$(BIN)/snakefmt --check workflow/
	$(BIN)/snakemake --lint --configfile .test/config/config.yaml

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/tiling_coords.py --quick

# On a GPU node (one GPU, 16 cores): extraction throughput (GPU and CPU JPEG decoding in the same run),
# the tile handoff and a cohort through the DAG against an in-process loop; JSON lines on stdout.
# benchmarks/device_check.sh runs a shorter version of these with the GPU tests on a bare node.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/tile_transport.py --workers 15 --side 49152 --repeats 3
	$(BIN)/python benchmarks/extract_throughput.py --device cuda --workers 15 --batch-size 128 --repeats 2 --side 49152 \
		--other-decoders tifffile
	$(BIN)/python benchmarks/cohort_throughput.py --device cuda --encoder resnet50_trunc --workers 15 --batch-size 128 \
		--slides 20 --side 49152 --same-slide

# Re-resolve the pinned environment (needs the package registry).
lock:
	rm -rf /tmp/histofuse-lock && $(PYTHON) -m venv /tmp/histofuse-lock
	/tmp/histofuse-lock/bin/pip install torch==2.14.1 torchvision==0.29.1 -r requirements/tiatoolbox-deps.txt -e '.[test]'
	/tmp/histofuse-lock/bin/pip install --no-deps tiatoolbox==2.1.3
	(echo "# Fully pinned environment, installed with --no-deps by the Makefile (see README)."; \
	 echo "# Regenerate with: make lock"; \
	 /tmp/histofuse-lock/bin/pip freeze --exclude-editable | grep -v '^histofuse') > requirements/lock.txt

clean:
	rm -rf results .snakemake
