# slimline: `make demo` runs the main job, `make test` runs every test. Both build the
# environment first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env system demo test test-fast lint images bench bench-engines bench-agent bench-fleet bench-audit chart clean

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
# with podman, cached after the first time), and the slow real-model demo.
test: env system lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m 'slow or not slow' --durations=15

# Unit and integration tests without the real-model demo.
test-fast: env
	HF_HUB_OFFLINE=1 $(BIN)/pytest

lint: env
	$(BIN)/ruff check tasks dags tests bench infra
	$(BIN)/ruff format --check tasks dags tests bench infra
	$(BIN)/mypy
	$(BIN)/lint-imports

# The task and agent images (infra/), from a local Debian base built with debootstrap; with a
# registry, BASE=docker.io/library/python:3.11-slim-bookworm starts from an official image instead.
images: system
	infra/images.sh all

# Every recipe variant on the demo teacher, latency measured side by side in one process:
# bench/results/compression.json and compression.png (not a timed test).
bench: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/compression.py

# The candidate's CPU engines against its registered ONNX graph, side by side (after `make demo`):
# bench/results/engines-cpu.json and engines-cpu.png.
bench-engines: env
	HF_HUB_OFFLINE=1 $(BIN)/python bench/engines_cpu.py

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

# Redraw the charts from the committed JSON.
chart: env
	$(BIN)/python bench/compression.py --chart
	$(BIN)/python bench/engines_cpu.py --chart
	$(BIN)/python bench/agent_footprint.py --chart
	$(BIN)/python bench/fleet.py --chart
	$(BIN)/python bench/audit_verify.py --chart

clean:
	rm -rf $(VENV) .slimline .mypy_cache .ruff_cache .pytest_cache
