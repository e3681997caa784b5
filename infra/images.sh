#!/usr/bin/env bash
# Build slimline's images with podman: the local base (debootstrap, cached), Python on it, then the
# agent and task images, labelled with the version and git commit.
#   infra/images.sh [agent|task|all]       (default all)
# BASE=docker.io/library/python:3.11-slim-bookworm starts the images from an official Python image
# instead of the local base (where a registry is reachable). TAG defaults to the project version.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/infra/containers.conf}
what=${1:-all}
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- tasks dags recipes targets fleets pyproject.toml infra 2>/dev/null)" ]; then
    commit="$commit-dirty"
fi
tag=${TAG:-$version}
base=${BASE:-}
if [ -z "$base" ]; then
    infra/base.sh localhost/slimline-debian:bookworm
    podman build --quiet -f infra/python.Containerfile -t localhost/slimline-python:3.11 infra >/dev/null
    base=localhost/slimline-python:3.11
fi
# Pin every package to the version in the project's environment (.venv, what `make test` tests).
mkdir -p infra/.build
if [ -x .venv/bin/pip ]; then
    .venv/bin/pip freeze --exclude-editable | grep -v '^-e ' >infra/.build/constraints.txt
else
    echo "no .venv: the images take the newest versions pyproject.toml allows" >&2
    : >infra/.build/constraints.txt
fi
# Wheels that live on this machine (the pinned PyTorch CPU build), and pip's cache, reused by builds.
wheels=()
if [ -d "${WHEELS:-/opt/wheels}" ]; then
    wheels=(-v "${WHEELS:-/opt/wheels}:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
fi
mkdir -p "${PIP_CACHE:-$HOME/.cache/pip}"
# The version and commit labels are also given on the command line: podman's layer cache does not
# key the Containerfile's LABEL step on the build arguments it expands, so a build whose sources
# match an earlier one (a commit of what was built dirty) reused that build's labels.
build() {  # name, Containerfile
    local began=$SECONDS
    podman build --quiet --layers -f "infra/$2" -t "localhost/slimline-$1:$tag" \
        --build-arg BASE="$base" --build-arg VERSION="$version" --build-arg GIT_COMMIT="$commit" \
        --label org.opencontainers.image.version="$version" --label org.opencontainers.image.revision="$commit" \
        "${wheels[@]}" -v "${PIP_CACHE:-$HOME/.cache/pip}:/root/.cache/pip" . >/dev/null
    local size
    size=$(podman image inspect --format '{{.Size}}' "localhost/slimline-$1:$tag")
    echo "localhost/slimline-$1:$tag built in $((SECONDS - began)) s, $((size / 1000000)) MB (commit $commit)"
}
case $what in
    agent) build agent agent.Containerfile ;;
    task) build task task.Containerfile ;;
    all) build agent agent.Containerfile && build task task.Containerfile ;;
    *) echo "usage: infra/images.sh [agent|task|all]" >&2; exit 2 ;;
esac
