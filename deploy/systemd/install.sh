#!/bin/sh
# Install rebootcoord on a host without Kubernetes: a virtualenv under /opt/rebootcoord built from
# the bundle's wheels (no index is asked: the host needs no access to PyPI), the systemd units in
# /etc/systemd/system and the example configs in /etc/rebootcoord. Never starts or enables
# anything and never overwrites a config; run from an unpacked bundle (`make systemd-bundle`),
# whose wheels/ lies beside this script. See docs/hosts.md.
#
#   sudo ./install.sh                       # then: systemctl daemon-reload; systemctl enable --now ...
#   ./install.sh --root "$tmp"              # a staged tree (DESTDIR): paths inside stay the final ones
#
# Options (or the environment variables in brackets):
#   --root DIR     install under DIR, as into a package or image root [DESTDIR]
#   --prefix DIR   the virtualenv, as the host will see it (default /opt/rebootcoord) [PREFIX]
#   --bindir DIR   where rebootcoord and rebootctl are linked ("" for nowhere; default
#                  /usr/local/bin) [BINDIR]
#   --python EXE   Python >= 3.11 with its venv module (default python3) [PYTHON]
#   --wheels DIR   the wheels (default: wheels/ beside this script) [WHEELS]
#   --no-venv      units and configs only
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
prefix=${PREFIX:-/opt/rebootcoord}
bindir=${BINDIR-/usr/local/bin}
python=${PYTHON:-python3}
wheels=${WHEELS:-$here/wheels}
venv=yes

die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --root) root=${2?--root needs a directory}; shift 2 ;;
        --prefix) prefix=${2?--prefix needs a directory}; shift 2 ;;
        --bindir) bindir=${2?--bindir needs a directory}; shift 2 ;;
        --python) python=${2?--python needs an executable}; shift 2 ;;
        --wheels) wheels=${2?--wheels needs a directory}; shift 2 ;;
        --no-venv) venv=no; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case $prefix in /*) ;; *) die "--prefix must be absolute: $prefix" ;; esac
case $root in ''|/*) ;; *) root=$(pwd)/$root ;; esac
root=${root%/}

if [ $venv = yes ]; then
    [ -d "$wheels" ] && ls "$wheels"/rebootcoord-*.whl >/dev/null 2>&1 ||
        die "no rebootcoord wheel in $wheels: run it from a bundle built by \`make systemd-bundle\`, or pass --wheels"
    "$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$python: Python >= 3.11 with its venv module is needed (found: $("$python" -V 2>&1 || echo none))"
    # The wheels of C extensions are for one Python and machine: say so before pip fails to match.
    if [ -f "$wheels/../PYTHON_TAG" ]; then
        want=$(cat "$wheels/../PYTHON_TAG")
        have=$("$python" -c 'import platform, sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
        [ "$want" = "$have" ] ||
            die "the bundle is for $want, $python is $have: build one with make systemd-bundle SYSTEMD_PYTHON=<that python>"
    fi

    # Built beside the old one and swapped in whole, so a running service never imports from a
    # half-written tree. Paths written into the tree (script shebangs, bytecode) are the final
    # ones: with --root they name $prefix, not the staging directory.
    final=$root$prefix
    stage=$final.new.$$
    trap 'rm -rf "$stage" "$final.old.$$"' EXIT
    mkdir -p "$(dirname "$final")"
    "$python" -m venv "$stage"
    "$stage/bin/python" -m pip install --quiet --no-index --no-compile --disable-pip-version-check \
        --find-links "$wheels" rebootcoord
    # As in the image (Dockerfile): the kubernetes client's asyncio twin and aiohttp, which only it
    # uses, go (~70 MB); so do pip and setuptools: an upgrade builds a new tree from a new bundle.
    rm -rf "$stage"/lib/python3*/site-packages/kubernetes/aio
    unneeded=$("$stage/bin/python" -m pip list --disable-pip-version-check --format=freeze | sed 's/==.*//; s/_/-/g' |
        grep -ixE 'aiohttp|aiohttp-retry|aiosignal|aiohappyeyeballs|frozenlist|multidict|yarl|propcache|pip|setuptools' ||
        true)
    # shellcheck disable=SC2086 # one package name per word
    "$stage/bin/python" -m pip uninstall --quiet --yes $unneeded
    rm -f "$stage"/bin/activate* "$stage"/bin/Activate.ps1
    for script in "$stage"/bin/*; do
        [ -f "$script" ] && [ ! -L "$script" ] && head -c 2 "$script" | grep -q '^#!' &&
            sed -i "s#$stage/#$prefix/#g" "$script"
    done
    sed -i "s#$stage#$prefix#g" "$stage/pyvenv.cfg"
    "$stage/bin/python" -m compileall -q -j 0 -s "$stage" -p "$prefix" "$stage/lib" >/dev/null
    if [ -e "$final" ]; then
        mv "$final" "$final.old.$$"
    fi
    mv "$stage" "$final"
    echo "installed $("$final/bin/python" -c 'import rebootcoord; print(rebootcoord.__version__)') into $final"
    if [ -n "$bindir" ]; then
        mkdir -p "$root$bindir"
        for exe in rebootcoord rebootctl; do
            ln -sfn "$prefix/bin/$exe" "$root$bindir/$exe"
        done
    fi
fi

# Units: the local administrator's place, /etc/systemd/system (/usr is read-only on Flatcar and
# Fedora CoreOS). ExecStart names the prefix.
units=$root/etc/systemd/system
mkdir -p "$units"
for unit in rebootcoord-agent.service rebootcoord-fleetlock.service; do
    sed "s#/opt/rebootcoord/#$prefix/#g" "$here/$unit" >"$units/$unit.tmp"
    chmod 0644 "$units/$unit.tmp"
    mv "$units/$unit.tmp" "$units/$unit"
done

# Configs: the agent's is root's (0600: it may hold a secret); the server's is read by its
# dynamic user (0644: no secret in it). An existing config is never replaced.
conf=$root/etc/rebootcoord
mkdir -p "$conf"
chmod 0755 "$conf"
for pair in agent.yaml:0600 fleetlock.yaml:0644; do
    name=${pair%%:*}
    mode=${pair#*:}
    if [ -e "$conf/$name" ]; then
        echo "kept $conf/$name (the example is $here/$name)"
    else
        cp "$here/$name" "$conf/$name.tmp"
        chmod "$mode" "$conf/$name.tmp"
        mv "$conf/$name.tmp" "$conf/$name"
    fi
done

cat <<EOF
next: edit $conf/agent.yaml (and fleetlock.yaml on the FleetLock server's host), then
  systemctl daemon-reload
  systemctl enable --now rebootcoord-agent.service        # every host
  systemctl enable --now rebootcoord-fleetlock.service    # the FleetLock server's host(s)
after an upgrade: systemctl try-restart rebootcoord-agent.service rebootcoord-fleetlock.service
EOF
