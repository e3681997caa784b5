#!/usr/bin/env bash
# The local base image, built without any registry: a minimal Debian bookworm root filesystem from
# debootstrap (Debian's mirror), with the host's locally added CA certificates (HTTPS to the package
# index may be re-signed by a CA only the host trusts), imported into podman.
#   infra/base.sh IMAGE            e.g. localhost/slimline-debian:bookworm
# Skipped when IMAGE exists already (`make images` rebuilds everything above it on top).
set -euo pipefail
image=${1:?usage: infra/base.sh IMAGE}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$image"; then
    echo "base image $image exists; remove it to rebuild (podman rmi $image)"
    exit 0
fi
work=$(mktemp -d /var/tmp/slimline-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "debootstrap $suite from $mirror into $work"
# Twice: a mirror that drops one connection should not fail the build.
for attempt in 1 2; do
    rm -rf "$work/rootfs"
    if debootstrap --variant=minbase "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
        break
    fi
    tail -20 "$work/debootstrap.log"
    [ "$attempt" = 2 ] && exit 1
done
mkdir -p "$work/rootfs/usr/local/share/ca-certificates"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$work/rootfs/usr/local/share/ca-certificates/"
fi
# Images carry no documentation, manual pages or translations: dpkg leaves them out from now on.
cat >"$work/rootfs/etc/dpkg/dpkg.cfg.d/slimline-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CFG
find "$work/rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
rm -rf "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/info/* "$work"/rootfs/usr/share/locale/*
rm -rf "$work"/rootfs/var/cache/apt/*.bin "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" --numeric-owner -c . | podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.title=debian-$suite-minbase" \
    --change "LABEL org.opencontainers.image.description=debootstrap --variant=minbase $suite from $mirror" \
    - "$image" >/dev/null
echo "base image $image built"
