#!/usr/bin/env bash
# Debian packages that CI (and `make test`) needs beyond a fresh machine, installed
# non-interactively. .ci/run calls it before `make test`. Idempotent, and instant when everything
# is there already.
#
#   podman, debootstrap   the container image: hack/image/build-base.sh debootstraps the base,
#                         `make image` builds with podman (chroot isolation, no daemon)
#   openssl               the test cluster's certificates (tests/support/cluster.py)
#   containerd, runc,     the real kubelet test node (tests/support/realnode.py): its container
#   containernetworking-plugins   runtime, the OCI runtime (crun refuses these machines' hybrid
#                         cgroups) and the loopback CNI plugin (/usr/lib/cni/loopback)
#   gcc, libc6-dev        the static pause image built for that node (hack/realnode/pause)
#   zsh                   the shell completion test loads `rebootctl completion zsh` in a real zsh
#
# Installed as the machine's packages were tested (with their recommended packages).
set -euo pipefail

PACKAGES=(podman debootstrap openssl containerd runc containernetworking-plugins gcc libc6-dev zsh)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "ci-deps: ${PACKAGES[*]}: installed"
    exit 0
fi

sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "ci-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update
"${sudo[@]}" apt-get -q -y -o DPkg::Lock::Timeout=300 install "${missing[@]}"
