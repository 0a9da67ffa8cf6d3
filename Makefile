# One entry point for developers and CI. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLUSTER := $(PY) hack/localcluster.py

.PHONY: help venv tools cluster-up cluster-down cluster-status test test-unit lint crd ci

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create the virtual environment with every dependency (pinned in pyproject.toml)
$(VENV)/.installed: pyproject.toml
	bash hack/install-python.sh $(VENV)
	touch $@

tools: ## build etcd, kube-apiserver & co, kwok and helm into ~/.cache/rlhf-operator/tools (once)
	bash hack/install-tools.sh

cluster-up: venv tools ## start the local EKS-like cluster (idempotent)
	$(CLUSTER) up

cluster-down: venv ## stop the local cluster and remove its files
	$(CLUSTER) down

cluster-status: venv ## show the local cluster
	$(CLUSTER) status

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

crd: venv ## regenerate crds/ from the API models
	$(PY) -m rlhf_operator crd --write

test: venv tools ## every test: unit, integration (real local cluster), training and end to end
	$(VENV)/bin/pytest tests

test-unit: venv ## the fast unit tests only
	$(VENV)/bin/pytest -m unit tests
