# The two commands a newcomer needs are `make run` and `make test`; see README.md.
SHELL := /bin/bash
BIN := $(CURDIR)/.cache/bin
BUF := $(BIN)/buf
RUN := uv run --frozen
TYPED := $(wildcard libs/common/src deploy/local/src services/*/src tools/cli/src \
	libs/common/tests deploy/local/tests services/*/tests tools/cli/tests tests bench)

.PHONY: setup run test lint protos check-protos test-unit test-integration test-e2e chaos bench clean

## Install what is missing (uv, PostgreSQL 15, JDK, Maven, buf, grpcurl, packages, Kafka jars).
setup:
	@deploy/local/install.sh

## The whole local stack in the foreground; Ctrl-C stops all of it. STORAGE=s3 keeps assets
## in a local S3 server instead of files; EDGE=1 starts the REST and GraphQL edges too.
run: setup
	$(RUN) pixsim-local run $(if $(STORAGE),--storage $(STORAGE)) $(if $(EDGE),--edge)

## Everything CI runs: setup, lint, generated code up to date, every test tier.
test: setup lint check-protos
	$(RUN) python -m pixsim_local.suite

test-unit:
	$(RUN) pytest -m unit

test-integration:
	$(RUN) pytest -m integration

## The whole stack as processes, driven like a user would (part of `make test` too).
test-e2e:
	$(RUN) pytest -m e2e

lint: $(BUF) build/protodeps
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy $(TYPED)
	$(BUF) lint
	BUF=$(BUF) protos/breaking.sh main

$(BUF):
	@deploy/local/install.sh

build/protodeps:
	$(RUN) python protos/generate.py --deps-only

## Regenerate libs/common/gen and the edge's descriptor set from protos/ (identical output
## for identical inputs).
protos:
	$(RUN) python protos/generate.py

## Fails when the committed generated code differs from what protos/ generates.
check-protos: protos
	@git diff --exit-code --stat -- libs/common/gen deploy/edge/pixsim.binpb \
		&& test -z "$$(git status --porcelain -- libs/common/gen deploy/edge/pixsim.binpb)" \
		|| { echo "generated code is stale: run 'make protos' and commit"; exit 1; }

## 1,000 jobs through the whole stack while services, the broker and the database crash.
chaos: setup
	PIXSIM_CHAOS_JOBS=1000 $(RUN) pytest tests/test_chaos.py -p no:logging

bench:
	PIXSIM_BENCH=1 deploy/local/install.sh
	$(RUN) python -m bench

clean:
	rm -rf build .cache/bin .mypy_cache .ruff_cache .pytest_cache
