#!/usr/bin/env bash
# Build a single-node Kubernetes v1.20.2 (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet) from Debian bookworm's `kubernetes` source package, and a static pause image for pod
# sandboxes. No registry and no upstream download: Debian ships no Kubernetes binaries, but its
# source package is the full upstream tree with vendor/. Also installs what infra/k8s/up.sh runs
# (etcd, containerd, the CNI plugins).
#   infra/k8s/build.sh
# The result lives outside the checkout, shared by every checkout:
#   ${SLIMLINE_K8S_CACHE:-$HOME/.cache/slimline/k8s-1.20.2}/{bin,pause}
# When the binaries are there, this only checks the packages (a few hundred milliseconds).
set -euo pipefail
cache=${SLIMLINE_K8S_CACHE:-$HOME/.cache/slimline/k8s-1.20.2}
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
say() { echo "k8s-build: $*"; }

# Runtime packages (always checked) and build packages (only for a build).
runtime_debs=(etcd-server containerd containernetworking-plugins openssl curl procps iproute2)
build_debs=(golang-go golang-github-modern-go-reflect2-dev jq rsync gcc libc6-dev make dpkg-dev)
need_debs() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

built() {
    local b
    for b in "${bins[@]}"; do [ -x "$cache/bin/$b" ] || return 1; done
    [ -f "$cache/pause/pause.tar" ]
}

need_debs "${runtime_debs[@]}"
if built; then
    say "cached in $cache ($("$cache/bin/kube-apiserver" --version))"
    exit 0
fi

began=$SECONDS
need_debs "${build_debs[@]}"
# deb-src entries, so that `apt-get source` finds the package (bookworm's deb822 sources file).
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    say "adding deb-src entries (/etc/apt/sources.list.d/debian-src.sources)"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
        $SUDO tee /etc/apt/sources.list.d/debian-src.sources >/dev/null
    $SUDO apt-get update -qq
fi

work="$cache/src"
rm -rf "$work" && mkdir -p "$work"
cd "$work"
say "fetching the source package (apt-get source kubernetes)"
# As root, apt downloads as the _apt user: let it write here (else it warns and goes unsandboxed).
[ "$(id -u)" != 0 ] || chown _apt "$work" 2>/dev/null || true
apt-get source --download-only -qq kubernetes >/dev/null
orig=$(find . -maxdepth 1 -name "kubernetes_*.orig.tar.gz" -printf "%f\n" | head -1)
say "extracting $orig"
tar xzf "$orig"
tree=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
[ -n "$tree" ] || { say "no kubernetes-* directory in $orig"; exit 1; }
cd "$tree"

# The vendored reflect2 1.0.1 crashes on Go >= 1.18 (its unsafe map iteration): take Debian's
# patched copy instead, without its go.mod (the tree builds in vendor mode).
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/
rm -f vendor/github.com/modern-go/reflect2/go.mod

# `make WHAT=`, not `go build`: the make rules run the code generators (openapi) first.
say "building ${bins[*]} (about 7 minutes on 2 cores; log: $work/make.log)"
whats=$(printf 'cmd/%s ' "${bins[@]}")
if ! nice -n 19 make WHAT="$whats" >"$work/make.log" 2>&1; then
    tail -30 "$work/make.log"
    say "make failed, see $work/make.log"
    exit 1
fi

# pause: the sandbox process every pod starts with; static, so the image can be FROM scratch.
say "building the pause image"
mkdir -p "$cache/pause.new"
gcc -Os -static -o "$cache/pause.new/pause" build/pause/linux/pause.c
strip "$cache/pause.new/pause"
tar -C "$cache/pause.new" --owner=0 --group=0 -cf "$cache/pause.new/rootfs.tar" pause

mkdir -p "$cache/bin.new"
for b in "${bins[@]}"; do cp "_output/bin/$b" "$cache/bin.new/"; done
cd "$cache"
rm -rf bin pause && mv bin.new bin && mv pause.new pause
# The pause image as a docker-archive that `ctr images import` reads (built by hand: no podman
# needed here); up.sh imports it into containerd's k8s.io namespace.
python3 - "$cache/pause" <<'PY'
import hashlib, io, json, sys, tarfile
d = sys.argv[1]
layer = open(f"{d}/rootfs.tar", "rb").read()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"]},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{
    "Config": config_name, "RepoTags": ["localhost/pause:3.2"], "Layers": ["layer.tar"],
}]).encode()
with tarfile.open(f"{d}/pause.tar.new", "w") as t:
    for name, data in ((config_name, config), ("layer.tar", layer), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
PY
mv "$cache/pause/pause.tar.new" "$cache/pause/pause.tar"
# The 3.3 GB tree is not needed once the binaries are out.
rm -rf "$work"
say "built in $((SECONDS - began)) s: $cache/bin ($("$cache/bin/kube-apiserver" --version))"
