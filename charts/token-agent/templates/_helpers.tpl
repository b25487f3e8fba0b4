{{/* Names and labels, as `helm create` makes them. */}}
{{- define "token-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "token-agent.fullname" -}}
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

{{- define "token-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "token-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "token-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "token-agent.serviceAccountName" -}}
{{- default (include "token-agent.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "token-agent.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{/*
The agent's config as the chart runs it: `.Values.config` plus what the chart decides, each
only when the config does not set it — the metrics listener on `.Values.metrics.port`, and
with more than one replica a Lease named after the release (leader election).
*/}}
{{- define "token-agent.config" -}}
{{- $config := deepCopy .Values.config }}
{{- with $config.server }}
{{- if eq (toString .enabled) "false" }}
{{- fail "config.server.enabled: false leaves the probes nothing to ask; the chart needs /readyz and /healthz" }}
{{- end }}
{{- if and .listen (not (hasSuffix (printf ":%d" (int $.Values.metrics.port)) (toString .listen))) }}
{{- fail (printf "config.server.listen %s does not use metrics.port %d, which the probes and the Service use" (toString .listen) (int $.Values.metrics.port)) }}
{{- end }}
{{- if and .listen (regexMatch "^(127\\.|localhost|\\[::1\\])" (toString .listen)) }}
{{- fail (printf "config.server.listen %s is loopback: the kubelet probes the pod IP" (toString .listen)) }}
{{- end }}
{{- end }}
{{- if not (hasKey $config "server") }}
{{- $_ := set $config "server" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not (hasKey $config "leader_election")) }}
{{- $_ := set $config "leader_election" (dict "enabled" true "lease" (include "token-agent.fullname" .)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
What the agent may do in the Kubernetes API, derived from the config (Secret sinks,
`kubernetes_token` sources, leader election) plus `.Values.rbac` for what the chart cannot see
(an existingConfigMap). A YAML map:
  secrets:  { <namespace>: { names: [...], anyName: bool } }
  tokens:   { <namespace>: [serviceAccount, ...] }
  leases:   { <namespace>: [lease, ...] }
`anyName` is set when a Secret name is per tenant (`{tenant}`): resourceNames cannot pin it.
*/}}
{{- define "token-agent.apiNeeds" -}}
{{- $ns := .Release.Namespace }}
{{- $secrets := dict }}
{{- $tokens := dict }}
{{- $leases := dict }}
{{- $config := include "token-agent.config" . | fromYaml }}
{{- if not .Values.existingConfigMap }}
{{- range $source := ($config.sources | default list) }}
{{- range $sink := ($source.sinks | default list) }}
{{- if and (kindIs "map" $sink) (hasKey $sink "secret") }}
{{- $where := default $ns $sink.secret.namespace }}
{{- $entry := get $secrets $where | default (dict "names" list "anyName" false) }}
{{- if contains "{" $sink.secret.name }}
{{- $_ := set $entry "anyName" true }}
{{- else }}
{{- $_ := set $entry "names" (append $entry.names $sink.secret.name | uniq) }}
{{- end }}
{{- $_ := set $secrets $where $entry }}
{{- end }}
{{- end }}
{{- if eq (toString $source.kind) "kubernetes_token" }}
{{- $where := default $ns $source.namespace }}
{{- $_ := set $tokens $where (append (get $tokens $where | default list) $source.service_account | uniq) }}
{{- end }}
{{- end }}
{{- with $config.leader_election }}
{{- if .enabled }}
{{- $where := default $ns .namespace }}
{{- $_ := set $leases $where (list (default "token-agent" .lease)) }}
{{- end }}
{{- end }}
{{- else if gt (int .Values.replicas) 1 }}
{{- /* --leader-elect with the config's own Lease settings: the default name, unless listed in rbac.leases. */}}
{{- if not .Values.rbac.leases }}
{{- $_ := set $leases $ns (list "token-agent") }}
{{- end }}
{{- end }}
{{- range .Values.rbac.secrets }}
{{- $where := default $ns .namespace }}
{{- $entry := get $secrets $where | default (dict "names" list "anyName" false) }}
{{- $_ := set $entry "names" (concat $entry.names (.names | default list) | uniq) }}
{{- if .anyName }}{{ $_ := set $entry "anyName" true }}{{ end }}
{{- $_ := set $secrets $where $entry }}
{{- end }}
{{- range .Values.rbac.serviceAccountTokens }}
{{- $where := default $ns .namespace }}
{{- $_ := set $tokens $where (concat (get $tokens $where | default list) .names | uniq) }}
{{- end }}
{{- range .Values.rbac.leases }}
{{- $where := default $ns .namespace }}
{{- $_ := set $leases $where (concat (get $leases $where | default list) .names | uniq) }}
{{- end }}
{{- toYaml (dict "secrets" $secrets "tokens" $tokens "leases" $leases) }}
{{- end }}

{{/*
An image reference from an `image`-shaped map (repository, tag, digest): a digest wins over the
tag, the tag defaults to the chart's appVersion. Called with (dict "image" … "root" $).
*/}}
{{- define "token-agent.imageRef" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end -}}
{{- end }}

{{/*
`.Values.image` overlaid with an override of the same shape (injector.image, injector.agentImage):
keys left unset come from the chart's image; a tag or digest set in the override replaces both
of the chart's (a chart-wide digest never pins an image whose tag was chosen here). A YAML map.
Called with (dict "override" … "root" $).
*/}}
{{- define "token-agent.overlayImage" -}}
{{- $image := deepCopy .root.Values.image }}
{{- $override := .override | default dict }}
{{- if $override.repository }}{{ $_ := set $image "repository" $override.repository }}{{ end }}
{{- if or $override.tag $override.digest }}
{{- $_ := set $image "tag" ($override.tag | default "") }}
{{- $_ := set $image "digest" ($override.digest | default "") }}
{{- end }}
{{- if $override.pullPolicy }}{{ $_ := set $image "pullPolicy" $override.pullPolicy }}{{ end }}
{{- toYaml $image }}
{{- end }}

{{/*
The injector (the mutating admission webhook). Its `app.kubernetes.io/name` differs from the
agent's so that the agent's selectors (Deployment, Service, PodDisruptionBudget,
NetworkPolicy), which match on name and instance, never take in the injector's pods.
*/}}
{{- define "token-agent.injector.fullname" -}}
{{- printf "%s-injector" (include "token-agent.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "token-agent.injector.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-injector" (include "token-agent.name" . | trunc 54 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "token-agent.injector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "token-agent.injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The objects the webhook names in self-managed mode, and the chart creates or refers to. */}}
{{- define "token-agent.injector.tlsSecret" -}}
{{- printf "%s-tls" (include "token-agent.injector.fullname" .) }}
{{- end }}

{{- define "token-agent.injector.selfManaged" -}}
{{- if eq .Values.injector.tls.mode "self-managed" }}true{{ end }}
{{- end }}
