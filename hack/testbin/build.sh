#!/usr/bin/env bash
# Builds the Kubernetes test control plane into OUT_DIR (default: testbin/ at the repo root):
#   kube-apiserver kube-controller-manager kube-scheduler kubectl   (module hack/testbin/kube)
#   kubelet (the real test node, with containerd and runc from Debian)  (module hack/testbin/kube)
#   pause   the real node's sandbox binary: build/pause/linux/pause.c of the same k8s.io/kubernetes
#           module, compiled static with gcc (there is no registry to pull registry.k8s.io/pause)
#   etcd                                                             (module hack/testbin/etcd)
#   helm                                                             (module hack/testbin/helm)
#   kwok                                                             (module hack/testbin/kwok)
#   prometheus                                                       (module hack/testbin/prometheus)
#   toxiproxy-server  the fault runner's TCP proxy (delay, cut, reset) (module hack/testbin/toxiproxy)
#
# Every version comes from the pinned go.mod/go.sum of those wrapper modules; nothing else is
# downloaded. Each tool has its own module so that their dependency graphs (k8s.io/* minors, grpc,
# otel) never force one another up. A stamp file keyed on the hash of the pins and of this script
# makes a second run a no-op; Go's module and build caches (GOMODCACHE, GOCACHE) make a rebuild
# after a pin bump incremental.
#
# prometheus is built for its HTTP API (queries, rules, alerts) only: without the `builtinassets`
# tag (no web UI: its pages answer 500, the API is unaffected) and with `remove_all_sd` (only
# static, file and http service discovery), which leaves out the cloud SDKs and client-go and a
# third of its packages.
#
# Usage: hack/testbin/build.sh [--check] [OUT_DIR]
#   --check  build nothing: exit 0 if OUT_DIR is up to date with the pins, 1 if not
#   FORCE=1  rebuild even when the stamp matches
set -euo pipefail

check_only=0
if [[ "${1:-}" == "--check" ]]; then
    check_only=1
    shift
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/testbin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

min_go_minor=26
if ! command -v go >/dev/null 2>&1; then
    cat >&2 <<EOF
error: 'go' is not on PATH. The test control plane (kube-apiserver, etcd, kwok, helm, prometheus)
is built from Go modules by hack/testbin/build.sh and needs Go 1.${min_go_minor} or newer.
Install it (for example the official tarball for linux/$(uname -m) into /usr/local/go and add
/usr/local/go/bin to PATH), then run 'make testbin' again.
EOF
    exit 2
fi
go_version="$(go env GOVERSION)"
go_minor="$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"$go_version")"
if [[ ! "$go_minor" =~ ^[0-9]+$ ]] || ((go_minor < min_go_minor)); then
    echo "error: $go_version is too old: hack/testbin needs Go 1.${min_go_minor} or newer" >&2
    exit 2
fi

binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet etcd helm kwok prometheus toxiproxy-server pause)

# The stamp: what we built from (pins, this script, the Go version). Any change rebuilds.
stamp_file="$out/.stamp"
stamp="$(
    cd "$here"
    {
        cat build.sh ./*/go.mod ./*/go.sum
        echo "$go_version"
    } | sha256sum | cut -d' ' -f1
)"
all_present=1
for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || all_present=0; done
if [[ "${FORCE:-0}" != 1 && $all_present == 1 && -f "$stamp_file" &&
    "$(cat "$stamp_file")" == "$stamp" ]]; then
    echo "testbin: up to date ($out, stamp ${stamp:0:12})"
    exit 0
fi
if ((check_only)); then
    echo "testbin: $out is missing binaries or was built from other pins: run 'make testbin'"
    exit 1
fi
rm -f "$stamp_file"

export CGO_ENABLED=0
# -mod=readonly: the build must match the committed go.sum, never rewrite it.
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false ${TESTBIN_GOFLAGS:-}"
parallel="${TESTBIN_PARALLEL:-2}"

modver() { # modver MODULE_DIR MODULE_PATH -> the version go.mod resolves to
    (cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
}

kube_version="$(modver kube k8s.io/kubernetes)"
kube_minor="$(cut -d. -f2 <<<"$kube_version")"
etcd_version="$(modver etcd go.etcd.io/etcd/server/v3)"
helm_version="$(modver helm helm.sh/helm/v3)"
helm_client_go="$(modver helm k8s.io/client-go)" # helm's default --kube-version follows it
kwok_version="$(modver kwok sigs.k8s.io/kwok)"
prom_module_version="$(modver prometheus github.com/prometheus/prometheus)"
# Prometheus 3.x publishes its Go module as v0.<major><minor 2 digits>.<patch>: v0.316.0 is 3.16.0.
prom_mm="$(cut -d. -f2 <<<"$prom_module_version")"
prom_version="$((prom_mm / 100)).$((prom_mm % 100)).$(cut -d. -f3 <<<"$prom_module_version" | cut -d- -f1)"
toxiproxy_version="$(modver toxiproxy github.com/Shopify/toxiproxy/v2)"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

cv=k8s.io/component-base/version
kube_ldflags="-s -w -X $cv.gitVersion=$kube_version -X $cv.gitMajor=1 -X $cv.gitMinor=$kube_minor"
kube_ldflags+=" -X $cv.gitTreeState=clean -X $cv.buildDate=$build_date"
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"
hv=helm.sh/helm/v3
helm_minor="$(cut -d. -f2 <<<"$helm_client_go")"
helm_ldflags="-s -w -X $hv/internal/version.version=$helm_version"
helm_ldflags+=" -X $hv/internal/version.gitTreeState=clean"
helm_ldflags+=" -X $hv/pkg/lint/rules.k8sVersionMajor=1 -X $hv/pkg/lint/rules.k8sVersionMinor=$helm_minor"
helm_ldflags+=" -X $hv/pkg/chartutil.k8sVersionMajor=1 -X $hv/pkg/chartutil.k8sVersionMinor=$helm_minor"
kwok_ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}"
kwok_ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${kube_version#v}"
pv=github.com/prometheus/common/version
prom_ldflags="-s -w -X $pv.Version=$prom_version -X $pv.Revision=$prom_module_version -X $pv.Branch=HEAD"
prom_ldflags+=" -X $pv.BuildUser=rebootcoord-testbin -X $pv.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"

# name|module dir|package|ldflags|build tags
targets=(
    "kube-apiserver|kube|k8s.io/kubernetes/cmd/kube-apiserver|$kube_ldflags"
    "kube-controller-manager|kube|k8s.io/kubernetes/cmd/kube-controller-manager|$kube_ldflags"
    "kube-scheduler|kube|k8s.io/kubernetes/cmd/kube-scheduler|$kube_ldflags"
    "kubectl|kube|k8s.io/kubernetes/cmd/kubectl|$kube_ldflags"
    "kubelet|kube|k8s.io/kubernetes/cmd/kubelet|$kube_ldflags"
    "etcd|etcd|go.etcd.io/etcd/server/v3|$etcd_ldflags"
    "helm|helm|helm.sh/helm/v3/cmd/helm|$helm_ldflags"
    "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|$kwok_ldflags"
    "prometheus|prometheus|github.com/prometheus/prometheus/cmd/prometheus|$prom_ldflags|remove_all_sd"
    "toxiproxy-server|toxiproxy|github.com/Shopify/toxiproxy/v2/cmd/server|-s -w -X github.com/Shopify/toxiproxy/v2.Version=${toxiproxy_version#v}"
)

echo "testbin: building into $out with $go_version, go build -p $parallel"
echo "testbin: kubernetes $kube_version, etcd $etcd_version, helm $helm_version, kwok $kwok_version"
echo "testbin: prometheus $prom_version ($prom_module_version), toxiproxy $toxiproxy_version"
echo "testbin: caches GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT

# Downloads first, per module, so a proxy failure is reported as such and not as a compile error.
t0=$SECONDS
for mod in kube etcd helm kwok prometheus toxiproxy; do
    echo "testbin: [download] module hack/testbin/$mod"
    (cd "$here/$mod" && go mod download) || {
        echo "error: 'go mod download' failed in hack/testbin/$mod (Go module proxy reachable?)" >&2
        exit 1
    }
done
echo "testbin: modules present in $((SECONDS - t0))s"

started=$SECONDS
i=0
for t in "${targets[@]}"; do
    IFS='|' read -r name mod pkg ldflags tags <<<"$t"
    i=$((i + 1))
    log="$log_dir/$name.log"
    t0=$SECONDS
    echo "testbin: [$i/${#targets[@]}] $name ($pkg${tags:+, tags $tags})"
    # -v lists each package as it compiles (cached ones are not listed): the progress counter.
    (cd "$here/$mod" &&
        exec go build -p "$parallel" -v -tags "${tags:-}" -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg") \
        >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 1 15); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "testbin:       $name: $(wc -l <"$log") packages compiled, $((SECONDS - t0))s"
        fi
    done
    if ! wait "$pid"; then
        echo "error: building $name failed; the last lines of its log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    mv -f "$out/$name.tmp" "$out/$name"
    echo "testbin:       $name done in $((SECONDS - t0))s ($(wc -l <"$log") packages compiled)"
done

# The pause binary, from the source in the pinned module (its Makefile's flags and version).
pause_src="$(cd "$here/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause"
pause_tag="$(sed -nE 's/^TAG \?= (.*)$/\1/p' "$pause_src/Makefile")"
if ! command -v gcc >/dev/null 2>&1; then
    echo "error: gcc is needed for the real node's pause binary: run hack/ci-deps.sh" >&2
    exit 2
fi
echo "testbin: [pause] gcc -static $pause_src/linux/pause.c (pause $pause_tag)"
gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-$kube_version" -o "$out/pause.tmp" "$pause_src/linux/pause.c"
mv -f "$out/pause.tmp" "$out/pause"

# Smoke check: every binary runs and reports the pinned version. (No `| head`: with pipefail the
# writer's SIGPIPE would fail the build.)
first_line() { local text; text="$("$@" 2>&1)" && printf 'testbin:       %s\n' "${text%%$'\n'*}"; }
first_line "$out/kube-apiserver" --version
first_line "$out/kube-controller-manager" --version
first_line "$out/kube-scheduler" --version
first_line "$out/kubectl" version --client
first_line "$out/kubelet" --version
first_line "$out/etcd" --version
first_line "$out/helm" version --short
first_line "$out/kwok" --version
first_line "$out/prometheus" --version
first_line "$out/toxiproxy-server" --version
first_line "$out/pause" -v

echo "$stamp" >"$stamp_file"
echo "testbin: all ${#targets[@]} binaries built in $((SECONDS - started))s"
