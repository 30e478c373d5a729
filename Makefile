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

.PHONY: demo test test-fast install sync-check nbtest pytest pytest-fast bench clean-demo lab dashboards openapi docs

demo: install ## run the main job on the embedded default workspace (./mlplat-demo)
	mlplat demo

test: install ## nbdev sync check + notebook tests + pytest
	$(MAKE) --no-print-directory sync-check
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest

# The tier a developer runs while changing code: no servers or daemons, no browser, no long end-to-end run
# (markers registered in pyproject.toml); `make test` still runs everything.
FAST := not services and not browser and not slow

test-fast: install ## nbdev sync check + notebook tests + the fast pytest tier
	$(MAKE) --no-print-directory sync-check
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest-fast

# The JupyterLab extension: TypeScript types generated from extension/openapi.json, built into mlplat/labextension
# (the wheel ships it); the editable install links it and enables the server extension in the venv.
EXT_SRC := $(wildcard extension/src/*.ts extension/style/* extension/schema/*) extension/package.json extension/package-lock.json extension/openapi.json
LABEXT := mlplat/labextension/package.json
LABEXT_LINK := $(VENV)/share/jupyter/labextensions/mlplat
SERVER_CFG := $(VENV)/etc/jupyter/jupyter_server_config.d/mlplat.json

install: $(STAMP) $(LABEXT_LINK) $(SERVER_CFG)

$(LABEXT): $(EXT_SRC) | $(STAMP)
	cd extension && npm ci --no-audit --no-fund --cache $(CURDIR)/.cache/npm && npm run build
	touch $@

$(LABEXT_LINK): $(LABEXT)
	mkdir -p $(dir $@) && ln -sfn $(CURDIR)/mlplat/labextension $@

$(SERVER_CFG): jupyter-config/jupyter_server_config.d/mlplat.json | $(STAMP)
	mkdir -p $(dir $@) && cp $< $@

openapi: $(STAMP) ## regenerate extension/openapi.json from the API models (the extension's types follow on the next build)
	mlplat jupyter openapi -o extension/openapi.json

lab: install ## JupyterLab on the demo's workspace, with the ML Platform sidebar
	MLPLAT_HOME=$(CURDIR)/mlplat-demo jupyter lab

dashboards: install ## the Voila dashboards on the demo's workspace (token printed)
	mlplat --home mlplat-demo dashboards serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: a bare `torch` (asked for by deepspeed) would pull a multi-GB CUDA build
$(STAMP): $(BIN)/python setup.py settings.ini
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e ".[dev,postgres,ray,spark]"
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

# JupyterHub's proxy (npm), for the team-mode tests that start a real hub
CHP := .cache/chp/node_modules/.bin/configurable-http-proxy
$(CHP):
	npm install --no-audit --no-fund --prefix .cache/chp --cache $(CURDIR)/.cache/npm configurable-http-proxy@5.3.0

pytest: install $(CHP) ## two workers, one test file per worker (servers, Ray and the demo's workspace stay within a file)
	pytest -n 2 --dist loadfile --durations=15 tests/

pytest-fast: install
	pytest -n 2 --dist loadfile --durations=15 -m "$(FAST)" tests/

docs: install ## the documentation site: notebooks/*.qmd pages + every notebook, rendered offline -> _docs/index.html
	python notebooks/_render_docs.py

bench: install ## import, start-up overheads, features, launch, serving, TLS+JWT cost, refusal floods, pipeline (local, cache and Ray), team-mode and cost-measurement benchmarks (serving needs Debian's wrk and nghttp2-client) -> benchmarks/RESULTS.md
	python benchmarks/bench_import.py
	python benchmarks/bench_overheads.py
	python benchmarks/bench_features.py
	python benchmarks/bench_launch.py
	python benchmarks/serving.py
	python benchmarks/bench_security.py
	python benchmarks/bench_refusals.py
	python benchmarks/bench_pipelines.py
	python benchmarks/bench_pipeline_cache.py
	python benchmarks/bench_pipeline_ray.py
	python benchmarks/bench_team.py
	python benchmarks/bench_cost.py
	python benchmarks/bench_demo.py

clean-demo:
	rm -rf mlplat-demo
