#!/usr/bin/env bash
# Copy podman images into the local cluster's containerd (namespace k8s.io, where the kubelet looks):
# there is no registry, so pods run images loaded here, with imagePullPolicy Never (or IfNotPresent
# and a tag other than latest).
#   infra/k8s/load-image.sh localhost/slimline-task:0.1.0 [IMAGE...]
# An image whose id containerd already holds under that name is skipped.
set -euo pipefail
# shellcheck source=infra/k8s/common.sh
source "$(dirname "$0")/common.sh"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/infra/containers.conf}
say() { echo "k8s-load-image: $*"; }
[ $# -gt 0 ] || { echo "usage: infra/k8s/load-image.sh IMAGE..." >&2; exit 2; }
alive_pid containerd >/dev/null || { say "the cluster is not up: run infra/k8s/up.sh (make k8s-up)"; exit 1; }

for image in "$@"; do
    began=$SECONDS
    # podman's image id is the digest of the image config: containerd shows it as the image's
    # config digest (`ctr images ls` lists the manifest's; ask for the config of the named image).
    id=$(podman image inspect --format '{{.Id}}' "$image") || { say "no podman image $image (make images builds slimline's)"; exit 1; }
    have=$(ctr_ images ls -q "name==$image" 2>/dev/null | head -1)
    if [ -n "$have" ] && ctr_ content get "$(ctr_ images ls "name==$image" |
        awk 'NR==2 {print $3}')" 2>/dev/null | grep -q "sha256:$id"; then
        say "$image already loaded (${id:0:12})"
        continue
    fi
    podman save --format docker-archive "$image" | ctr_ images import - >/dev/null
    say "$image loaded in $((SECONDS - began)) s (${id:0:12})"
done
