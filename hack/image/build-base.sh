#!/usr/bin/env bash
# Build the local base image of the rebootcoord image from Debian packages alone:
# debootstrap a minimal Debian (python3, its venv module, CA certificates; util-linux, which
# holds nsenter, is part of every Debian), strip what a container never reads, tar it and
# `podman import` it.
#
# Why: there is no container registry here, so the Dockerfile's default public base cannot be
# pulled; `make image` passes this one as BASE_IMAGE instead.
#
# Cached: the image carries the hash of this script (and of the suite and package list) in a
# label, and the script returns at once when an image with that label exists. Needs root,
# debootstrap and podman (hack/ci-deps.sh installs both).
#
# Usage: hack/image/build-base.sh [IMAGE]    (default localhost/rebootcoord-base:bookworm)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1 rebuilds.
set -euo pipefail

IMAGE=${1:-localhost/rebootcoord-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,ca-certificates
LABEL=org.rebootcoord.base-recipe

recipe=$( { cat "$0"; echo "$SUITE $PACKAGES $(uname -m)"; } | sha256sum | cut -c1-16)

if [ "${FORCE:-0}" != 1 ] && podman image exists "$IMAGE" &&
   [ "$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$IMAGE")" = "$recipe" ]; then
    echo "base image $IMAGE is up to date (recipe $recipe)"
    exit 0
fi

for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing: run hack/ci-deps.sh (or apt-get install $tool)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "$0: debootstrap needs root" >&2; exit 1; }

work=$(mktemp -d /var/tmp/rebootcoord-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
start=$(date +%s)

echo "debootstrap $SUITE ($PACKAGES) from $MIRROR ..."
debootstrap --variant=minbase --include="$PACKAGES" --components=main \
    "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -30 "$work/debootstrap.log" >&2; exit 1; }

# What a container never reads: package caches and lists, docs, man pages, translations, logs.
# dpkg keeps its database, so `dpkg -l` still tells what is inside.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/var/cache/debconf/*-old \
       "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/tmp/* "$rootfs"/run/*
# The container runtime provides these; the build host's must not leak in.
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"
echo "python3: $(chroot "$rootfs" python3 --version)"

tar --numeric-owner --xattrs -C "$rootfs" -c . |
    podman import \
        --change "LABEL $LABEL=$recipe" \
        --change "LABEL org.opencontainers.image.description=Debian $SUITE minbase with $PACKAGES (debootstrap)" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/usr/bin/python3"]' \
        - "$IMAGE" >/dev/null
echo "built $IMAGE in $(( $(date +%s) - start )) s: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
