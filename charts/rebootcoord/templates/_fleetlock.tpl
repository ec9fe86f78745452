{{/*
The FleetLock server (fleetlock.*): names and labels of its own, its configuration file, the API
calls that configuration makes, and the checks of values that cannot work together.

Its pods carry app.kubernetes.io/name=<name>-fleetlock, never the agents' name: the DaemonSet,
the agents' Service, NetworkPolicy and ServiceMonitor select name=<name>, and would otherwise
take the server's pods for agents.
*/}}

{{- define "rebootcoord.fleetlock.name" -}}
{{- printf "%s-fleetlock" (include "rebootcoord.name" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/* 45 + "-fleetlock" + "-metrics" fits a Service name's 63. */}}
{{- define "rebootcoord.fleetlock.fullname" -}}
{{- printf "%s-fleetlock" (include "rebootcoord.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "rebootcoord.fleetlock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rebootcoord.fleetlock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: fleetlock-server
{{- end }}

{{- define "rebootcoord.fleetlock.labels" -}}
helm.sh/chart: {{ include "rebootcoord.chart" . }}
{{ include "rebootcoord.fleetlock.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "rebootcoord.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "rebootcoord.fleetlock.serviceAccountName" -}}
{{- $sa := .Values.fleetlock.serviceAccount }}
{{- if $sa.create }}
{{- default (include "rebootcoord.fleetlock.fullname" .) $sa.name }}
{{- else }}
{{- required "fleetlock.serviceAccount.name: name the existing ServiceAccount of the FleetLock server when fleetlock.serviceAccount.create is false" $sa.name }}
{{- end }}
{{- end }}

{{/* fleetlock.image's fields, else the agent's. A tag or repository of its own drops the agent's
digest (a digest would win over the tag). */}}
{{- define "rebootcoord.fleetlock.image" -}}
{{- $img := .Values.fleetlock.image }}
{{- $repository := default .Values.image.repository $img.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $img.tag }}
{{- $digest := $img.digest }}
{{- if not (or $img.repository $img.tag) }}{{ $digest = default .Values.image.digest $img.digest }}{{ end }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{- define "rebootcoord.fleetlock.pullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.fleetlock.image.pullPolicy }}
{{- end }}

{{/* Where the Secrets of fleetlock.tls are mounted. */}}
{{- define "rebootcoord.fleetlock.tlsDir" -}}/etc/rebootcoord/fleetlock-tls{{- end }}
{{- define "rebootcoord.fleetlock.clientCADir" -}}/etc/rebootcoord/fleetlock-client-ca{{- end }}

{{/*
The server's configuration file: config (the agents': backend, group, etcd, drain...) with each
key of fleetlock.config on top (key by key: a false or an empty list there wins too), the groups
it serves (default [config.group]), and the files of the mounted Secrets.
*/}}
{{- define "rebootcoord.fleetlock.configFile" -}}
{{- $cfg := deepCopy .Values.config }}
{{- range $key, $value := .Values.fleetlock.config }}{{ $_ := set $cfg $key $value }}{{ end }}
{{- if not $cfg.fleetlock_groups }}
{{- $_ := set $cfg "fleetlock_groups" (list (default "default" $cfg.group)) }}
{{- end }}
{{- range list "node_name" "holder_id" }}
{{- if not (get $cfg .) }}{{ $_ := unset $cfg . }}{{ end }}
{{- end }}
{{- with .Values.fleetlock.tls }}
{{- if .secretName }}
{{- if not $cfg.fleetlock_tls_cert_file }}{{ $_ := set $cfg "fleetlock_tls_cert_file" (printf "%s/tls.crt" (include "rebootcoord.fleetlock.tlsDir" $)) }}{{ end }}
{{- if not $cfg.fleetlock_tls_key_file }}{{ $_ := set $cfg "fleetlock_tls_key_file" (printf "%s/tls.key" (include "rebootcoord.fleetlock.tlsDir" $)) }}{{ end }}
{{- end }}
{{- if .clientCASecret }}
{{- if not $cfg.fleetlock_tls_client_ca_file }}{{ $_ := set $cfg "fleetlock_tls_client_ca_file" (printf "%s/ca.crt" (include "rebootcoord.fleetlock.clientCADir" $)) }}{{ end }}
{{- end }}
{{- end }}
{{- if .Values.etcd.tlsSecret }}
{{- if not $cfg.etcd_ca_file }}{{ $_ := set $cfg "etcd_ca_file" "/etc/rebootcoord/etcd/ca.crt" }}{{ end }}
{{- if not $cfg.etcd_cert_file }}{{ $_ := set $cfg "etcd_cert_file" "/etc/rebootcoord/etcd/tls.crt" }}{{ end }}
{{- if not $cfg.etcd_key_file }}{{ $_ := set $cfg "etcd_key_file" "/etc/rebootcoord/etcd/tls.key" }}{{ end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The port of fleetlock_listen, and of metrics_address (empty when metrics are off). */}}
{{- define "rebootcoord.fleetlock.listen" -}}
{{- $cfg := include "rebootcoord.fleetlock.configFile" . | fromYaml }}
{{- if hasKey $cfg "fleetlock_listen" }}{{ $cfg.fleetlock_listen }}{{ else }}0.0.0.0:9729{{ end }}
{{- end }}

{{- define "rebootcoord.fleetlock.port" -}}
{{- regexFind "[0-9]+$" (include "rebootcoord.fleetlock.listen" .) }}
{{- end }}

{{- define "rebootcoord.fleetlock.metricsAddress" -}}
{{- $cfg := include "rebootcoord.fleetlock.configFile" . | fromYaml }}
{{- if hasKey $cfg "metrics_address" }}{{ $cfg.metrics_address }}{{ else }}0.0.0.0:9727{{ end }}
{{- end }}

{{- define "rebootcoord.fleetlock.metricsPort" -}}
{{- $addr := include "rebootcoord.fleetlock.metricsAddress" . }}
{{- if $addr }}{{ regexFind "[0-9]+$" $addr }}{{ end }}
{{- end }}

{{/*
The server's API calls for its configuration, in JSON, as rebootcoord/cli/wiring.py builds it
(build_fleetlock_service):
  backend kubernetes: the groups' Leases and the waiter Leases of the clients in line (list: the
    count of groups, with fleetlock_any_group)
  node operations (the Lease backend or node_ops kubernetes, node_ops not none): find a client's
    Node by machine ID among all Nodes (list), read and patch it (cordon, uncordon, annotations,
    labels, the taint), list its pods, evict them, events about it; the Ready check after the
    reboot reads the Node, verify_pods_ready lists its pods
  the agents' gates, which apply to the server's clients too: blocking_pod_selector lists the
    client Node's pods, max_unavailable_nodes >= 0 lists the Nodes, pdb_precheck (default true)
    with node operations lists the PodDisruptionBudgets cluster-wide
The agents' rules for the same configuration, plus nodes list (an agent reads its own Node by
name).
*/}}
{{- define "rebootcoord.fleetlock.apiCalls" -}}
{{- $cfg := include "rebootcoord.fleetlock.configFile" . | fromYaml }}
{{- $kube := or (eq (default "etcd" $cfg.backend) "kubernetes") (eq (default "auto" $cfg.node_ops) "kubernetes") }}
{{- $nodeOps := and $kube (ne (default "auto" $cfg.node_ops) "none") }}
{{- $budget := false }}
{{- if and (hasKey $cfg "max_unavailable_nodes") (not (kindIs "invalid" $cfg.max_unavailable_nodes)) }}
{{- $budget = ge (int $cfg.max_unavailable_nodes) 0 }}
{{- end }}
{{- $nodes := list }}
{{- $pods := list }}
{{- if $nodeOps }}{{ $nodes = list "get" "list" "patch" }}{{ $pods = list "list" }}
{{- else if and $kube $budget }}{{ $nodes = list "list" }}{{ end }}
{{- $pdbPrecheck := true }}
{{- if hasKey $cfg "pdb_precheck" }}{{ $pdbPrecheck = $cfg.pdb_precheck }}{{ end }}
{{- dict "kube" $kube "leases" (eq (default "etcd" $cfg.backend) "kubernetes") "events" $nodeOps "nodes" $nodes "pods" $pods "evictions" $nodeOps "pdbs" (and $nodeOps $pdbPrecheck) | toJson }}
{{- end }}

{{/* The namespace of the server's Leases: its config's namespace, else the release's. */}}
{{- define "rebootcoord.fleetlock.leaseNamespace" -}}
{{- $cfg := include "rebootcoord.fleetlock.configFile" . | fromYaml }}
{{- default .Release.Namespace $cfg.namespace }}
{{- end }}

{{/* The keys of the node labels the server sets (pre_reboot_labels, post_reboot_labels), JSON. */}}
{{- define "rebootcoord.fleetlock.labelKeys" -}}
{{- $cfg := include "rebootcoord.fleetlock.configFile" . | fromYaml }}
{{- $keys := list }}
{{- range list "pre_reboot_labels" "post_reboot_labels" }}
{{- range (get $cfg . | default list) }}
{{- $key := trim (regexReplaceAll "=.*$" (toString .) "") }}
{{- if $key }}{{ $keys = append $keys $key }}{{ end }}
{{- end }}
{{- end }}
{{- toJson (uniq $keys) }}
{{- end }}

{{/* Refuse FleetLock values that cannot work. values.schema.json checks each value alone. */}}
{{- define "rebootcoord.fleetlock.validate" -}}
{{- $fl := .Values.fleetlock }}
{{- $cfg := include "rebootcoord.fleetlock.configFile" . | fromYaml }}
{{- $backend := default "etcd" $cfg.backend }}
{{- if eq $backend "fleetlock" }}
{{- fail "fleetlock.enabled: the server keeps the semaphore itself, so its backend cannot be fleetlock: set fleetlock.config.backend to kubernetes or etcd (config.backend=fleetlock is for agents that ask a FleetLock server)" }}
{{- end }}
{{- if and (eq $backend "etcd") (not $cfg.etcd_endpoints) }}
{{- fail "the FleetLock server's backend is etcd but no etcd_endpoints are set (config or fleetlock.config): the default, 127.0.0.1:2379, would be the pod itself" }}
{{- end }}
{{- if $cfg.etcd_password }}
{{- fail "fleetlock.config.etcd_password would be stored in a ConfigMap: put it in a Secret and name it in etcd.passwordSecret.name" }}
{{- end }}
{{- $listen := include "rebootcoord.fleetlock.listen" . }}
{{- if not (regexMatch "^(0\\.0\\.0\\.0|\\[::\\]|::)?:[0-9]+$" $listen) }}
{{- fail (printf "fleetlock.config.fleetlock_listen=%q: the Service, the kubelet and Zincati reach the pod on its own IP, so listen on every address with a port, such as 0.0.0.0:9729" $listen) }}
{{- end }}
{{- $port := include "rebootcoord.fleetlock.metricsPort" . }}
{{- $addr := include "rebootcoord.fleetlock.metricsAddress" . }}
{{- if and (not $port) (or $fl.livenessProbe.enabled $fl.readinessProbe.enabled) }}
{{- fail "the FleetLock server's metrics_address is empty (metrics off), but its probes ask /healthz there: give metrics_address a port, or set fleetlock.livenessProbe.enabled and fleetlock.readinessProbe.enabled to false" }}
{{- end }}
{{- if and $port (not (regexMatch "^(0\\.0\\.0\\.0|\\[::\\]|::)?:[0-9]+$" $addr)) }}
{{- fail (printf "the FleetLock server's metrics_address=%s listens on one address only: the kubelet's probes and Prometheus reach the pod on its own IP, so use 0.0.0.0:%s" $addr $port) }}
{{- end }}
{{- if eq $port (include "rebootcoord.fleetlock.port" .) }}
{{- fail (printf "the FleetLock server's fleetlock_listen and metrics_address use the same port (%s): give metrics_address (config or fleetlock.config) another" $port) }}
{{- end }}
{{- if eq (include "rebootcoord.fleetlock.serviceAccountName" .) (include "rebootcoord.serviceAccountName" .) }}
{{- fail "fleetlock.serviceAccount.name is the agents' ServiceAccount: the server needs its own (the agents' admission policy confines theirs to one Node)" }}
{{- end }}
{{- if and $fl.tls.clientCASecret (not $fl.tls.secretName) }}
{{- fail "fleetlock.tls.clientCASecret needs fleetlock.tls.secretName: client certificates are asked for over TLS only" }}
{{- end }}
{{- if and $fl.podDisruptionBudget.enabled (gt (int $fl.replicas) 1) (ge (int $fl.podDisruptionBudget.minAvailable) (int $fl.replicas)) }}
{{- fail (printf "fleetlock.podDisruptionBudget.minAvailable=%v with %v replicas would let no replica be evicted, and the drain of its node would never end: use fewer than fleetlock.replicas" $fl.podDisruptionBudget.minAvailable $fl.replicas) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled: the ServiceMonitors select the metrics Services" }}
{{- end }}
{{- end }}
