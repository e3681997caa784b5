#!/usr/bin/env bash
# Start a single-node Kubernetes v1.20.2 on 127.0.0.1 from the binaries infra/k8s/build.sh built:
# containerd (private config, state and socket), etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kubelet, each a background process with its PID and log under the run dir
# (${SLIMLINE_K8S_RUN:-.tools/k8s}). Prints the kubeconfig's path. Already up: says so, exits 0.
#   infra/k8s/up.sh            then   KUBECONFIG=.tools/k8s/kubeconfig kubectl get nodes
# No registry: images come from podman (infra/k8s/load-image.sh), pods use imagePullPolicy Never.
# No kube-proxy and no cluster DNS: Service IPs do not route; pods reach each other by pod IP.
set -euo pipefail
# shellcheck source=infra/k8s/common.sh
source "$(dirname "$0")/common.sh"
say() { echo "k8s-up: $*"; }
timeout_s=${SLIMLINE_K8S_UP_TIMEOUT:-180}
[ "$(id -u)" = 0 ] || { say "run as root: containerd and the kubelet manage mounts, cgroups and networks"; exit 1; }

for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    [ -x "$cache/bin/$b" ] || { say "$cache/bin/$b is missing: run infra/k8s/build.sh (make k8s-build)"; exit 1; }
done

up=0
for c in "${components[@]}"; do alive_pid "$c" >/dev/null && up=$((up + 1)); done
if [ "$up" = "${#components[@]}" ] && [ -f "$kubeconfig" ]; then
    say "already up"
    echo "$kubeconfig"
    exit 0
fi
if [ "$up" -gt 0 ] || [ -d "$run" ]; then
    # Half up (a component died, or the machine rebooted under it): start from nothing.
    say "partly up or stale state in $run: taking it down first"
    "$(dirname "$0")/down.sh"
fi

began=$SECONDS
mkdir -p "$run"/{pids,logs,pki,etcd,cni/net.d,cni/ipam,containerd/root,containerd/state,kubelet}
if [ ${#sock} -gt 100 ]; then
    say "socket path too long for a unix socket (${#sock} > 100): set SLIMLINE_K8S_RUN to a shorter dir"
    exit 1
fi

# start NAME CMD...: in the background, log to logs/NAME.log, PID to pids/NAME.pid. setsid: a
# Ctrl-C in the calling terminal (or pytest's exit) must not take the cluster down with it.
start() {
    local name=$1
    shift
    setsid "$@" >"$run/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$run/pids/$name.pid"
}
# wait_for WHAT LOG CMD...: retry CMD until it succeeds, or fail naming the log to read.
wait_for() {
    local what=$1 log=$2 deadline=$((SECONDS + timeout_s))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            say "timed out after ${timeout_s} s waiting for $what; see $log"
            tail -5 "$log" | sed 's/^/    /' >&2
            exit 1
        fi
        sleep 1
    done
}

# Credentials: a random admin token (static token file) and the key pair that signs service account
# tokens. The API server makes its own self-signed serving certificate in pki/.
token=$(openssl rand -hex 16)
echo "$token,admin,admin,system:masters" >"$run/pki/tokens.csv"
openssl genrsa -out "$run/pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$run/pki/sa.key" -pubout -out "$run/pki/sa.pub" 2>/dev/null
chmod 600 "$run/pki/"*
umask 077
cat >"$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
  - name: slimline-local
    cluster:
      server: https://127.0.0.1:6443
      insecure-skip-tls-verify: true
users:
  - name: admin
    user:
      token: $token
contexts:
  - name: slimline-local
    context:
      cluster: slimline-local
      user: admin
      namespace: default
current-context: slimline-local
KC
umask 022

# containerd: Debian's defaults with private paths. restrict_oom_score_adj: without CAP_SYS_RESOURCE
# runc cannot set the sandbox's oom_score_adj of -998 and every pod fails ("can't get final child's PID
# from pipe"). netns under the state dir, so that down.sh finds every mount under the run dir.
containerd config default | sed \
    -e "s|^root = .*|root = \"$run/containerd/root\"|" \
    -e "s|^state = .*|state = \"$run/containerd/state\"|" \
    -e "s|^  address = \"/run/containerd/containerd.sock\"|  address = \"$sock\"|" \
    -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
    -e "s|netns_mounts_under_state_dir = false|netns_mounts_under_state_dir = true|" \
    -e "s|sandbox_image = .*|sandbox_image = \"localhost/pause:3.2\"|" \
    -e "s|bin_dir = \"/opt/cni/bin\"|bin_dir = \"/usr/lib/cni\"|" \
    -e "s|conf_dir = \"/etc/cni/net.d\"|conf_dir = \"$run/cni/net.d\"|" \
    -e "s|path = \"/opt/containerd\"|path = \"$run/containerd/opt\"|" \
    >"$run/containerd/config.toml"
grep -q "restrict_oom_score_adj = true" "$run/containerd/config.toml"
# One bridge (slimline0), addresses from 10.244.0.0/24 kept in the run dir. No masquerading: pods need
# no way out (nothing outside is reachable), and no iptables rules are left behind.
cat >"$run/cni/net.d/10-slimline.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "slimline",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "slimline0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.0.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$run/cni/ipam"
      }
    }
  ]
}
CNI
say "starting containerd"
start containerd containerd --config "$run/containerd/config.toml"
wait_for containerd "$run/logs/containerd.log" ctr -a "$sock" version
# The sandbox image every pod starts with (built by build.sh; no registry to pull it from).
ctr_ images import "$cache/pause/pause.tar" >/dev/null

say "starting etcd"
start etcd etcd --name slimline --data-dir "$run/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster slimline=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for etcd "$run/logs/etcd.log" curl -sf http://127.0.0.1:2379/health

say "starting kube-apiserver"
bin=$cache/bin
# Hostname as the kubelet's preferred address: the node is "localhost", so `kubectl logs/exec` reach
# the kubelet on 127.0.0.1 (a loopback node IP is refused).
start kube-apiserver "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 --insecure-port=0 \
    --cert-dir="$run/pki" --token-auth-file="$run/pki/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$run/pki/sa.pub" --service-account-signing-key-file="$run/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/24 --kubelet-preferred-address-types=Hostname \
    --allow-privileged=true
readyz() { curl -sfk -H "Authorization: Bearer $token" https://127.0.0.1:6443/readyz; }
wait_for "kube-apiserver /readyz" "$run/logs/kube-apiserver.log" readyz

say "starting kube-controller-manager, kube-scheduler"
start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$kubeconfig" \
    --service-account-private-key-file="$run/pki/sa.key" --root-ca-file="$run/pki/apiserver.crt" \
    --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1 --port=0
start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --port=0

say "starting kubelet"
# cgroupfs, no QoS cgroups, no node allocatable enforcement and no swap check: this machine is
# itself a container host with limited cgroup control. Anonymous webhook-less auth on 127.0.0.1 only.
cat >"$run/kubelet/config.yaml" <<KCFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
readOnlyPort: 0
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
# No registry: an image the kubelet collected could never be pulled again, so it collects none
# (podman's image store on the same disk fills it past the default 85% mark).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
KCFG
start kubelet "$bin/kubelet" --config="$run/kubelet/config.yaml" --kubeconfig="$kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --root-dir="$run/kubelet" --cert-dir="$run/kubelet/pki" --hostname-override=localhost \
    --pod-infra-container-image=localhost/pause:3.2 --v=1
node_ready() {
    curl -sfk -H "Authorization: Bearer $token" https://127.0.0.1:6443/api/v1/nodes/localhost |
        python3 -c 'import json,sys; c={x["type"]:x["status"] for x in json.load(sys.stdin)["status"]["conditions"]}; sys.exit(c.get("Ready")!="True")'
}
wait_for "node localhost to be Ready" "$run/logs/kubelet.log" node_ready
# Pods can only be created once their namespace's default service account exists.
default_sa() {
    curl -sfk -H "Authorization: Bearer $token" https://127.0.0.1:6443/api/v1/namespaces/default/serviceaccounts/default
}
wait_for "the default service account" "$run/logs/kube-controller-manager.log" default_sa
say "up in $((SECONDS - began)) s: Kubernetes $("$bin/kube-apiserver" --version | cut -d' ' -f2) on 127.0.0.1:6443, logs in $run/logs"
echo "$kubeconfig"
