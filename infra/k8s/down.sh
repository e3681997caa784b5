#!/usr/bin/env bash
# Stop the local cluster infra/k8s/up.sh started and remove its state (the run dir; the build cache
# stays): the kubelet first (so it restarts nothing), then the control plane, the pods' containers and
# shims, containerd, the mounts under the run dir and the pods' bridge. Nothing running: exits 0.
#   infra/k8s/down.sh
set -euo pipefail
# shellcheck source=infra/k8s/common.sh
source "$(dirname "$0")/common.sh"
say() { echo "k8s-down: $*"; }

# stop NAME...: TERM to each at once, then KILL whatever still runs after 10 s, by the saved PIDs.
stop() {
    local name pid pids=()
    for name in "$@"; do
        pid=$(alive_pid "$name") || continue
        stopped+=("$name")
        kill "$pid" 2>/dev/null || true
        pids+=("$pid")
    done
    for _ in $(seq 50); do
        for pid in "${pids[@]}"; do running "$pid" && break; pid=; done
        [ -z "${pid:-}" ] && return 0
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        running "$pid" && { say "$pid ignored TERM: KILL"; kill -9 "$pid" 2>/dev/null || true; }
    done
    return 0
}

if [ ! -d "$run" ]; then
    say "not running (no $run)"
    exit 0
fi
stopped=()
# The kubelet first, so that it restarts nothing; etcd after the API server, its only client.
stop kubelet
stop kube-scheduler kube-controller-manager kube-apiserver
stop etcd

# The pods' containers: kill their tasks through containerd while it still answers, then the shims
# (containerd-shim-runc-v2 processes whose -address is this containerd's socket) that outlive it.
if alive_pid containerd >/dev/null && ctr -a "$sock" version >/dev/null 2>&1; then
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 1
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
fi
stop containerd
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
    # Each shim is the parent of its containers' processes: those go first.
    for child in $(pgrep -P "$pid" || true); do kill -9 "$child" 2>/dev/null || true; done
    kill -9 "$pid" 2>/dev/null || true
done

# Mounts under the run dir (pods' secrets and emptyDirs, containers' root filesystems, sandboxes' shm,
# network namespaces), deepest first.
findmnt -rn -o TARGET | { grep -F "$run/" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
done
# The pods' bridge (its veths went with their network namespaces).
ip link show slimline0 >/dev/null 2>&1 && { ip link delete slimline0 || true; }

rm -rf "$run"
if [ ${#stopped[@]} -gt 0 ]; then
    say "stopped ${stopped[*]}; removed $run"
else
    say "nothing was running; removed $run"
fi
