{{/*
Names and labels, then the decisions that follow from the agent's configuration: which privileges
the reboot method needs, whether the agent talks to the Kubernetes API, which host directories it
reads. Contradictory values stop the rendering here, with a message that names the values.
*/}}

{{- define "rebootcoord.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rebootcoord.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rebootcoord.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rebootcoord.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rebootcoord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rebootcoord.labels" -}}
helm.sh/chart: {{ include "rebootcoord.chart" . }}
{{ include "rebootcoord.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "rebootcoord.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rebootcoord.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount to use when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rebootcoord.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The namespace of the Leases and events: config.namespace, else the release's. */}}
{{- define "rebootcoord.leaseNamespace" -}}
{{- default .Release.Namespace .Values.config.namespace }}
{{- end }}

{{/*
"true" when something runs a command on the host: the command reboot method, a detector other
than the sentinel file, or a command health check. Such commands run through nsenter in PID 1's
namespaces, which needs a privileged container.
*/}}
{{- define "rebootcoord.needsHostCommands" -}}
{{- $cfg := .Values.config }}
{{- $need := eq (default "command" $cfg.reboot_method) "command" }}
{{- range $cfg.detectors }}
{{- $type := . }}
{{- if kindIs "map" . }}{{ $type = .type }}{{ end }}
{{- if ne $type "sentinel" }}{{ $need = true }}{{ end }}
{{- end }}
{{- range $cfg.health_checks }}
{{- if eq .type "command" }}{{ $need = true }}{{ end }}
{{- end }}
{{- ternary "true" "" $need }}
{{- end }}

{{/* host_exec as the agent will see it: given, else nsenter when host commands are needed. */}}
{{- define "rebootcoord.hostExec" -}}
{{- $cfg := .Values.config }}
{{- if $cfg.host_exec }}{{ $cfg.host_exec }}
{{- else if include "rebootcoord.needsHostCommands" . }}nsenter
{{- else }}direct
{{- end }}
{{- end }}

{{/* "true" when the agent calls the Kubernetes API: the Lease backend, or node operations asked
for explicitly (rebootcoord/cli/wiring.py: uses_kubernetes). */}}
{{- define "rebootcoord.usesKubeAPI" -}}
{{- $cfg := .Values.config }}
{{- if or (eq (default "etcd" $cfg.backend) "kubernetes") (eq (default "auto" $cfg.node_ops) "kubernetes") }}true{{ end }}
{{- end }}

{{/*
The agent's API calls for this configuration, as rebootcoord/cli/wiring.py builds its parts, in
JSON: {"leases": bool, "events": bool, "nodes": [verbs], "pods": [verbs], "evictions": bool,
"pdbs": bool}.
  node operations (node_ops not none): read and patch the Node, list its pods, evict them, events
  verify_node_ready / boot_id_source node: read the Node
  verify_pods_ready, blocking_pod_selector: list the node's pods
  max_unavailable_nodes >= 0 (the budget gate): list the nodes
  pdb_precheck (default true) with node operations: list the PodDisruptionBudgets, cluster-wide
*/}}
{{- define "rebootcoord.apiCalls" -}}
{{- $cfg := .Values.config }}
{{- $kube := eq (include "rebootcoord.usesKubeAPI" .) "true" }}
{{- $nodeOps := and $kube (ne (default "auto" $cfg.node_ops) "none") }}
{{- $readyCheck := true }}
{{- if hasKey $cfg "verify_node_ready" }}{{ $readyCheck = $cfg.verify_node_ready }}{{ end }}
{{- $budget := false }}
{{- if and (hasKey $cfg "max_unavailable_nodes") (not (kindIs "invalid" $cfg.max_unavailable_nodes)) }}
{{- $budget = ge (int $cfg.max_unavailable_nodes) 0 }}
{{- end }}
{{- $nodes := list }}
{{- if and $kube (or $nodeOps $readyCheck (eq (default "file" $cfg.boot_id_source) "node")) }}{{ $nodes = append $nodes "get" }}{{ end }}
{{- if and $kube $budget }}{{ $nodes = append $nodes "list" }}{{ end }}
{{- if $nodeOps }}{{ $nodes = append $nodes "patch" }}{{ end }}
{{- $pods := list }}
{{- if and $kube (or $nodeOps $cfg.verify_pods_ready $cfg.blocking_pod_selector) }}{{ $pods = append $pods "list" }}{{ end }}
{{- $pdbPrecheck := true }}
{{- if hasKey $cfg "pdb_precheck" }}{{ $pdbPrecheck = $cfg.pdb_precheck }}{{ end }}
{{- $pdbs := and $nodeOps $pdbPrecheck }}
{{- dict "leases" (eq (default "etcd" $cfg.backend) "kubernetes") "events" $nodeOps "nodes" $nodes "pods" $pods "evictions" $nodeOps "pdbs" $pdbs | toJson }}
{{- end }}

{{/* The host directories the sentinel detectors read, each mounted read-only under host_root. */}}
{{- define "rebootcoord.hostDirs" -}}
{{- $dirs := list }}
{{- range .Values.config.detectors }}
{{- $type := . }}
{{- $path := "/run/reboot-required" }}
{{- if kindIs "map" . }}{{ $type = .type }}{{ $path = default $path .path }}{{ end }}
{{- if eq $type "sentinel" }}{{ $dirs = append $dirs (dir $path) }}{{ end }}
{{- end }}
{{- toJson (uniq $dirs) }}
{{- end }}

{{/* metrics_address as the agent will see it (its default when unset). */}}
{{- define "rebootcoord.metricsAddress" -}}
{{- $addr := .Values.config.metrics_address }}
{{- if kindIs "invalid" $addr }}0.0.0.0:9727{{ else }}{{ $addr }}{{ end }}
{{- end }}

{{/* The port of metrics_address ("0.0.0.0:9727", ":9727"); empty when metrics are off. */}}
{{- define "rebootcoord.metricsPort" -}}
{{- $addr := include "rebootcoord.metricsAddress" . }}
{{- if $addr }}{{ regexFind "[0-9]+$" $addr }}{{ end }}
{{- end }}

{{/* The directory of the signal relay's socket, shared by the agent and the relay container. */}}
{{- define "rebootcoord.relayDir" -}}/run/rebootcoord{{- end }}

{{/* The configuration file: the values' config, plus host_exec, the signal relay and the etcd TLS
files it implies. */}}
{{- define "rebootcoord.configFile" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "host_exec" (include "rebootcoord.hostExec" .) }}
{{- if ne (include "rebootcoord.hostExec" .) "nsenter" }}
{{- $_ := set $cfg "reboot_signal_relay" (printf "%s/relay.sock" (include "rebootcoord.relayDir" .)) }}
{{- end }}
{{- /* Empty identities mean "the node's name": leave them to NODE_NAME (validate refuses others). */}}
{{- range list "node_name" "holder_id" }}
{{- if not (get $cfg .) }}{{ $_ := unset $cfg . }}{{ end }}
{{- end }}
{{- if .Values.etcd.tlsSecret }}
{{- if not $cfg.etcd_ca_file }}{{ $_ := set $cfg "etcd_ca_file" "/etc/rebootcoord/etcd/ca.crt" }}{{ end }}
{{- if not $cfg.etcd_cert_file }}{{ $_ := set $cfg "etcd_cert_file" "/etc/rebootcoord/etcd/tls.crt" }}{{ end }}
{{- if not $cfg.etcd_key_file }}{{ $_ := set $cfg "etcd_key_file" "/etc/rebootcoord/etcd/tls.key" }}{{ end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Refuse values that cannot work together. values.schema.json checks each value alone (types, enums,
unknown keys); these checks look at several at once.
*/}}
{{- define "rebootcoord.validate" -}}
{{- $cfg := .Values.config }}
{{- $method := default "command" $cfg.reboot_method }}
{{- $hostExec := include "rebootcoord.hostExec" . }}
{{- if and (eq $method "command") (ne $hostExec "nsenter") }}
{{- fail "config.reboot_method=command with config.host_exec=direct would run the reboot command inside the container, where it cannot reboot the node: use config.host_exec=nsenter (privileged), or config.reboot_method=signal (SIGRTMIN+5 to PID 1, CAP_KILL only)" }}
{{- end }}
{{- if and (include "rebootcoord.needsHostCommands" .) (ne $hostExec "nsenter") }}
{{- fail "config.detectors or config.health_checks run host commands (command, rpm-ostree, update-engine), which need config.host_exec=nsenter: with host_exec=direct they would run inside the container; remove them or set host_exec to nsenter (privileged)" }}
{{- end }}
{{- if or $cfg.node_name $cfg.holder_id }}
{{- fail "config.node_name and config.holder_id would give every pod of the DaemonSet the same identity: leave them unset (the agent takes the node's name from NODE_NAME)" }}
{{- end }}
{{- if $cfg.etcd_password }}
{{- fail "config.etcd_password would be stored in a ConfigMap: put it in a Secret and name it in etcd.passwordSecret.name" }}
{{- end }}
{{- if and (eq (default "/" $cfg.host_root) "/") (ne (include "rebootcoord.hostDirs" .) "[]") }}
{{- fail "config.host_root=/ reads the sentinel file from the container's own file system: use /host (the chart mounts the host's directories there)" }}
{{- end }}
{{- if and (eq (default "etcd" $cfg.backend) "etcd") (not $cfg.etcd_endpoints) }}
{{- fail "config.backend=etcd needs config.etcd_endpoints: the agent's default, 127.0.0.1:2379, would be the pod itself" }}
{{- end }}
{{- $port := include "rebootcoord.metricsPort" . }}
{{- if and (not $port) (or .Values.livenessProbe.enabled .Values.readinessProbe.enabled .Values.service.enabled) }}
{{- fail "config.metrics_address is empty (metrics off), but the probes and the metrics Service use it: set livenessProbe.enabled, readinessProbe.enabled and service.enabled to false, or give metrics_address a port" }}
{{- end }}
{{- $addr := include "rebootcoord.metricsAddress" . }}
{{- if and $port (not (regexMatch "^(0\\.0\\.0\\.0|\\[::\\]|::)?:[0-9]+$" $addr)) }}
{{- fail (printf "config.metrics_address=%s listens on one address only: the kubelet's probes and Prometheus reach the pod on its own IP, so use 0.0.0.0:%s or :%s" $addr $port $port) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled: the ServiceMonitor selects the metrics Service" }}
{{- end }}
{{- end }}
