# deskstream — `make help` lists the targets. Everything installs what it needs first.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
# kustomize for tests/deploy, built from the Go module proxy into a project-local bin dir.
KUSTOMIZE_VERSION := v5.8.2
TOOLS_BIN := $(CURDIR)/.tools/bin
GO := $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
PY := .venv/bin/python
INFRA := $(PY) deploy/local/infra.py

.DEFAULT_GOAL := help
.PHONY: help deps run test test-faults deploy-check bench lint fmt infra-up infra-down infra-status topics schemas clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## install what is missing: uv, the locked Python env, kustomize, Kafka jars, Dovecot, Chromium
	@command -v uv >/dev/null 2>&1 || test -x $(UV) || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	@$$(command -v uv || echo $(UV)) sync --all-packages --frozen --quiet
	@test "$$($(TOOLS_BIN)/kustomize version 2>/dev/null)" = "$(KUSTOMIZE_VERSION)" || \
		GOBIN=$(TOOLS_BIN) GOFLAGS=-buildvcs=false $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@test -n "$$(ls deploy/local/kafka/target/kafka-libs/kafka_2.13-*.jar 2>/dev/null)" || \
		mvn -q -B -f deploy/local/kafka/pom.xml package
	@missing="$$(command -v dovecot >/dev/null 2>&1 || echo dovecot-imapd) \
		$$(command -v chromium >/dev/null 2>&1 || echo chromium)"; \
	if [ -n "$${missing// /}" ]; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

run: deps ## start infrastructure and all five services; Ctrl-C stops everything
	@$(PY) deploy/local/run.py

test: deps ## run the whole suite against real Kafka, MongoDB-wire, Dovecot and SMTP
	@$(PY) -m pytest $(PYTEST_ARGS)

deploy-check: deps ## validate the Dockerfile, compose and Kubernetes manifests (part of `test`)
	@$(PY) -m pytest tests/deploy -q $(PYTEST_ARGS)

test-faults: deps ## fault injection: SIGKILLs, Kafka/MongoDB/IMAP outages, poison; prints a table
	@DESKSTREAM_FAULTS=1 $(PY) -m pytest tests/faults $(PYTEST_ARGS)

bench: deps ## benchmark: raw Kafka, raw MongoDB, inbound->ticket pipeline (BENCH_ARGS=--help)
	@$(PY) -m bench.run $(BENCH_ARGS)

lint: deps ## ruff, ruff format --check, mypy (strict on shared/)
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/mypy shared/deskstream services deploy/local tests bench

fmt: deps ## apply ruff's fixes and formatting
	@.venv/bin/ruff check --fix .
	@.venv/bin/ruff format .

infra-up: deps ## start Kafka, SecantusDB, Dovecot and SMTP (idempotent)
	@$(INFRA) up

infra-down: ## stop the local infrastructure
	@$(INFRA) down

infra-status: ## show which local infrastructure runs
	@$(INFRA) status

topics: deps ## create every registry topic (DESKSTREAM_TOPIC_PREFIX, KAFKA_BOOTSTRAP_SERVERS)
	@$(PY) -m deskstream.topics

schemas: deps ## export JSON Schemas of every event model to schemas/
	@$(PY) -m deskstream.schemas schemas

clean: infra-down ## stop infrastructure and remove run data
	@rm -rf .run
