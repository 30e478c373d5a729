# mlplat — the two commands of the README: `make demo` and `make test`.
# Everything they need (venv, dependencies) is set up on first use and skipped after.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.mlplat-installed
TORCH_PIN := torch==2.13.0

export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export DS_BUILD_OPS := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test install sync-check nbtest pytest bench clean-demo

demo: install ## run the main job on the embedded default workspace (./mlplat-demo)
	mlplat demo

test: install ## nbdev sync check + notebook tests + pytest
	$(MAKE) --no-print-directory sync-check
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: a bare `torch` (asked for by deepspeed) would pull a multi-GB CUDA build
$(STAMP): $(BIN)/python setup.py settings.ini
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e ".[dev,postgres,ray]"
	$(BIN)/pip check
	touch $@

# notebooks are the source: exporting and cleaning them must change nothing
sync-check: install
	@before="$$(git status --porcelain; git diff)"; \
	nbdev_export && nbdev_clean; \
	after="$$(git status --porcelain; git diff)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev sync check FAILED: nbdev_export/nbdev_clean changed the tree — run them and commit:"; git status --short; exit 1; fi; \
	if [ -n "$$CI" ] && [ -n "$$(git status --porcelain)" ]; then \
	  echo "nbdev sync check FAILED: untracked or modified files on a clean checkout:"; git status --short; exit 1; fi; \
	echo "nbdev sync check: notebooks and mlplat/ are in sync"

nbtest: install
	nbdev_test --n_workers 2 --timing

pytest: install ## two workers, one test file per worker (servers and Ray stay within a file); then the heaviest test alone
	pytest -n 2 --dist loadfile --durations=12 tests/ --ignore=tests/test_demo.py
	pytest --durations=1 tests/test_demo.py

bench: install ## import, features, launch, serving and pipeline benchmarks (serving needs Debian's wrk and nghttp2-client) -> benchmarks/RESULTS.md
	python benchmarks/bench_import.py
	python benchmarks/bench_features.py
	python benchmarks/bench_launch.py
	python benchmarks/serving.py
	python benchmarks/bench_pipelines.py
	python benchmarks/bench_demo.py

clean-demo:
	rm -rf mlplat-demo
