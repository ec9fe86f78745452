#!/usr/bin/env bash
# Render the plain manifests in deploy/ from charts/rebootcoord (release "rebootcoord" in namespace
# "rebootcoord"), for `kubectl apply -f` without Helm:
#
#   rebootcoord.yaml          defaults: Lease backend, reboot_method command (privileged, nsenter)
#   rebootcoord-signal.yaml   reboot_method signal: no privileged container; the agent unprivileged, a relay with CAP_KILL
#   rebootcoord-fleetlock.yaml  the FleetLock server alone (fleetlock.enabled), for Zincati: to apply
#                             beside either of the above (or alone, for a cluster of Zincati nodes)
#
# Usage: deploy/render.sh [OUTDIR]   (default: deploy/). `make deploy-manifests` runs it;
# tests/packaging/test_deploy_manifests.py renders to a temporary directory and fails when the
# committed files differ, so the manifests cannot drift from the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM=${HELM:-testbin/helm}
OUT=${1:-deploy}
KUBE_VERSION=1.36.3
NAMESPACE=rebootcoord

[ -x "$HELM" ] || command -v "$HELM" >/dev/null || { echo "$0: $HELM not found: run make testbin (or set HELM)" >&2; exit 1; }

namespace() {  # the release namespace, the same in every file (applying one never relabels it)
    echo "---"
    echo "apiVersion: v1"
    echo "kind: Namespace"
    echo "metadata:"
    echo "  name: $NAMESPACE"
    echo "  labels:"
    echo "    # hostPID (and, for the nsenter method, a privileged container) need the privileged level."
    echo "    pod-security.kubernetes.io/enforce: privileged"
}

helm_template() {
    "$HELM" template rebootcoord charts/rebootcoord --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
        --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy "$@"
}

render() {  # render FILE DESCRIPTION [helm args...]
    local file=$1 description=$2
    shift 2
    {
        echo "# $description"
        echo "# Generated from charts/rebootcoord by deploy/render.sh (make deploy-manifests): edit the chart, not this file."
        echo "# kubectl apply -f $file"
        namespace
        helm_template "$@"
    } >"$OUT/$file.tmp"
    mv "$OUT/$file.tmp" "$OUT/$file"
}

mkdir -p "$OUT"
render rebootcoord.yaml \
    "rebootcoord: Lease backend, reboot by 'systemctl reboot' on the host through nsenter (privileged)."
render rebootcoord-signal.yaml \
    "rebootcoord: Lease backend, reboot by SIGRTMIN+5 to the host's PID 1 from a relay container (CAP_KILL only); the agent unprivileged." \
    --set config.reboot_method=signal
# The server's objects only: --show-only each of its templates that renders with these values.
fleetlock=()
for template in deployment configmap service networkpolicy pdb rbac admissionpolicy; do
    fleetlock+=(--show-only "templates/fleetlock-$template.yaml")
done
render rebootcoord-fleetlock.yaml \
    "rebootcoord FleetLock server for Zincati (Fedora CoreOS): Lease backend, group default, http on port 9729 of Service rebootcoord-fleetlock." \
    --set fleetlock.enabled=true "${fleetlock[@]}"
