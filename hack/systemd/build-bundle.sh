#!/bin/sh
# Build the bare-host bundle: rebootcoord-<version>-systemd-<cpXY>-<arch>.tar.gz in OUT_DIR, with
# the wheels of rebootcoord and of every dependency for this Python and machine, the units, the
# example configs and deploy/systemd/install.sh. A host installs it offline (docs/hosts.md).
#
#   PYTHON=.venv/bin/python hack/systemd/build-bundle.sh dist     # what `make systemd-bundle` runs
#
# Building needs the dependencies' wheels: from PyPI, or pip's cache and find-links (PIP_FIND_LINKS).
# grpcio, protobuf and PyYAML have C extensions, so the wheels are for one Python (cp311: 3.11)
# and one architecture; the bundle's name says which.
set -eu

out=${1:?usage: build-bundle.sh OUT_DIR}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/rebootcoord/__init__.py")
tag=$("$python" -c 'import platform, sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
name=rebootcoord-$version-systemd-$tag
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# From a copy of the sources: nothing is written into the working tree (build/, *.egg-info).
mkdir -p "$work/src"
cp -R "$repo/pyproject.toml" "$repo/README.md" "$repo/rebootcoord" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

bundle=$work/$name
mkdir -p "$bundle/wheels"
"$python" -m pip wheel --quiet --disable-pip-version-check --prefer-binary \
    --wheel-dir "$bundle/wheels" "$work/src"
for f in install.sh rebootcoord-agent.service rebootcoord-fleetlock.service agent.yaml fleetlock.yaml; do
    cp "$repo/deploy/systemd/$f" "$bundle/$f"
done
chmod 0755 "$bundle/install.sh"
printf '%s\n' "$version" >"$bundle/VERSION"
printf '%s\n' "$tag" >"$bundle/PYTHON_TAG"  # install.sh refuses another Python or machine

tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz.tmp" "$name"
mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
echo "$out/$name.tar.gz"
