# shellcheck shell=bash disable=SC2034  # (variables used by the scripts that source this file)
# Shared by infra/k8s/*.sh (sourced): where the build cache and the cluster's state live.
# One cluster per machine (it listens on fixed ports of 127.0.0.1): 2379-2380 etcd, 6443
# kube-apiserver, 10250 kubelet, 10257/10259 controller-manager/scheduler.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${SLIMLINE_K8S_CACHE:-$HOME/.cache/slimline/k8s-1.20.2}
run=${SLIMLINE_K8S_RUN:-$root/.tools/k8s}
kubeconfig=$run/kubeconfig
sock=$run/containerd/containerd.sock
components=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)

# Whether a process runs. A zombie does not: once up.sh has exited its components belong to PID 1,
# and not every init (a container's, a micro-VM's) reaps them, so `kill -0` alone would say yes.
running() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

# The PID saved for a component, if that process still runs.
alive_pid() {
    local f="$run/pids/$1.pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    running "$pid" && echo "$pid"
}

ctr_() { ctr -a "$sock" -n k8s.io "$@"; }
