{{/*
Expand the name of the chart.
*/}}
{{- define "igsp-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "igsp-gateway.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "igsp-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "igsp-gateway.labels" -}}
helm.sh/chart: {{ include "igsp-gateway.chart" . }}
{{ include "igsp-gateway.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "igsp-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "igsp-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "igsp-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "igsp-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Gateway image reference: digest wins over tag; the tag defaults to the appVersion.
*/}}
{{- define "igsp-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the pods read their keys from.
*/}}
{{- define "igsp-gateway.secretName" -}}
{{- default (include "igsp-gateway.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
"true" when the gateway uses a shared Redis store, "" for SQLite.
*/}}
{{- define "igsp-gateway.usesRedis" -}}
{{- if or .Values.redis.url .Values.redis.internal.enabled .Values.redis.external.mode }}true{{ end }}
{{- end }}

{{/*
Environment variable prefix of a partner's keys: acme-games -> PARTNER_ACME_GAMES.
Call with the partner id.
*/}}
{{- define "igsp-gateway.partnerEnvPrefix" -}}
{{- printf "PARTNER_%s" (. | upper | replace "-" "_" | replace "." "_") }}
{{- end }}

{{/*
Redis (in-chart) names and labels. The name label differs from the gateway's so the
gateway Service never selects the Redis pod.
*/}}
{{- define "igsp-gateway.redis.fullname" -}}
{{- printf "%s-redis" (include "igsp-gateway.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "igsp-gateway.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "igsp-gateway.name" . | trunc 57 | trimSuffix "-" }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "igsp-gateway.redis.labels" -}}
helm.sh/chart: {{ include "igsp-gateway.chart" . }}
{{ include "igsp-gateway.redis.selectorLabels" . }}
app.kubernetes.io/component: redis
app.kubernetes.io/part-of: {{ include "igsp-gateway.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
store.url of gateway.yaml: external Redis, in-chart Redis, or SQLite on the data volume.
*/}}
{{- define "igsp-gateway.storeUrl" -}}
{{- $x := .Values.redis.external }}
{{- if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else if $x.mode }}
{{- $query := list }}
{{- $path := "/" }}
{{- if eq $x.mode "sentinel" }}
{{- $path = printf "/%s" $x.sentinelService }}
{{- end }}
{{- if and (ne $x.mode "cluster") (gt (int $x.db) 0) }}
{{- if eq $x.mode "sentinel" }}{{ $query = append $query (printf "db=%d" (int $x.db)) }}{{ else }}{{ $path = printf "/%d" (int $x.db) }}{{ end }}
{{- end }}
{{- if gt (int $x.waitReplicas) 0 }}
{{- $query = append $query (printf "wait_replicas=%d" (int $x.waitReplicas)) }}
{{- end }}
{{- $scheme := get (dict "standalone" "redis" "sentinel" "redis+sentinel" "cluster" "redis+cluster") $x.mode }}
{{- printf "%s://%s%s" $scheme (join "," $x.hosts) $path }}{{ if $query }}?{{ join "&" $query }}{{ end }}
{{- else if .Values.redis.internal.enabled }}
{{- $auth := ternary ":${REDIS_PASSWORD}@" "" .Values.redis.internal.auth }}
{{- printf "redis://%s%s:6379/0" $auth (include "igsp-gateway.redis.fullname" .) }}
{{- else }}
{{- print "sqlite:////var/lib/igsp-gateway/gateway.db" }}
{{- end }}
{{- end }}

{{/*
The store section of gateway.yaml. For redis.external: the user, the password as a
${REDIS_PASSWORD} reference (its value reaches the pod from a Secret, never this
ConfigMap) and TLS with the CA file where the CA Secret is mounted.
*/}}
{{- define "igsp-gateway.storeSection" -}}
{{- $x := .Values.redis.external }}
{{- $store := dict "url" (include "igsp-gateway.storeUrl" .) "retention_days" (int .Values.gateway.store.retentionDays) }}
{{- if and $x.mode (not .Values.redis.url) }}
{{- with $x.username }}{{ $_ := set $store "username" . }}{{ end }}
{{- if $x.auth }}{{ $_ := set $store "password" "${REDIS_PASSWORD}" }}{{ end }}
{{- if $x.sentinelAuth }}{{ $_ := set $store "sentinel_auth" true }}{{ end }}
{{- if $x.tls.enabled }}
{{- $tls := dict "enabled" true }}
{{- if $x.tls.caSecret.name }}{{ $_ := set $tls "ca_file" (printf "%s/%s" $x.tls.mountPath $x.tls.caSecret.key) }}{{ end }}
{{- $_ := set $store "tls" $tls }}
{{- end }}
{{- end }}
{{- toYaml $store }}
{{- end }}

{{/*
All mapping files as a YAML map of file name -> content: files/mappings/*.yaml bundled in
the chart (and *.yml), overridden by .Values.mappings entries of the same name (given as
text, or as a YAML tree that is serialised here).
*/}}
{{- define "igsp-gateway.mappingFiles" -}}
{{- $files := dict }}
{{- range $path, $_ := .Files.Glob "files/mappings/*.{yaml,yml}" }}
{{- $_ := set $files (base $path) ($.Files.Get $path) }}
{{- end }}
{{- range $name, $content := .Values.mappings }}
{{- $_ := set $files $name (ternary (toYaml $content) $content (kindIs "map" $content)) }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
gateway.yaml content, built as data and serialised once so quoting is always right.
Secrets appear only as ${ENV} references filled from the Secret at load; the admin token
is optional (${IGSP_ADMIN_TOKEN:-} is empty when the Secret has no such key).
*/}}
{{- define "igsp-gateway.config" -}}
{{- $g := .Values.gateway }}
{{- $partners := list }}
{{- range .Values.partners }}
{{- $env := include "igsp-gateway.partnerEnvPrefix" .id }}
{{- $secrets := list (printf "${%s_SECRET}" $env) }}
{{- if or .previousSecret .rotating }}
{{- $secrets = append $secrets (printf "${%s_SECRET_PREVIOUS}" $env) }}
{{- end }}
{{- $p := dict "id" .id "face" .face "mapping" (printf "mappings/%s" .mapping) "api_key" (printf "${%s_API_KEY}" $env) "secrets" $secrets }}
{{- if .hooksUrl }}
{{- $_ := set $p "hooks_url" .hooksUrl }}
{{- end }}
{{- if .allowedIps }}
{{- $_ := set $p "allowed_ips" .allowedIps }}
{{- end }}
{{- $p = mergeOverwrite $p (deepCopy (.extra | default dict)) }}
{{- $partners = append $partners $p }}
{{- end }}
{{- $cfg := dict
  "version" 1
  "server" (dict "host" "0.0.0.0" "port" (int $g.port) "internal_port" (int $g.internalPort) "workers" (int $g.workers) "max_body_bytes" (int64 $g.maxBodyBytes) "shutdown_grace_seconds" (int $g.shutdownGraceSeconds) "drain_seconds" (int $g.drainSeconds))
  "store" (include "igsp-gateway.storeSection" . | fromYaml)
  "security" (dict "signature_window_seconds" (int $g.security.signatureWindowSeconds) "replay_protection" $g.security.replayProtection)
  "rate_limits" (dict "shared" $g.rateLimits.shared "on_store_error" $g.rateLimits.onStoreError)
  "logging" (dict "level" $g.logLevel)
  "admin" (dict "token" "${IGSP_ADMIN_TOKEN:-}")
  "platform_face" (dict "hooks_path" $g.platformFace.hooksPath)
  "provider_face" (dict "mount" $g.providerFace.mount)
  "partners" $partners
}}
{{- if $g.trustedProxies }}
{{- $_ := set $cfg.server "trusted_proxies" $g.trustedProxies }}
{{- $_ := set $cfg.server "forwarded_header" $g.forwardedHeader }}
{{- end }}
{{- if $g.tracing.enabled }}
{{- $t := dict "enabled" true "protocol" $g.tracing.protocol "sampler" $g.tracing.sampler "sampler_arg" $g.tracing.samplerArg }}
{{- if $g.tracing.endpoint }}{{ $_ := set $t "endpoint" $g.tracing.endpoint }}{{ end }}
{{- if $g.tracing.serviceName }}{{ $_ := set $t "service_name" $g.tracing.serviceName }}{{ end }}
{{- $_ := set $cfg "tracing" $t }}
{{- end }}
{{- $cfg = mergeOverwrite $cfg (deepCopy $g.extraConfig) }}
{{- include "igsp-gateway.orderedYaml" (dict "map" $cfg "order" (list "version" "server" "store" "security" "rate_limits" "logging" "tracing" "admin" "platform_face" "provider_face" "partners")) }}
{{- end }}

{{/*
Serialise a map with the keys in "order" first and the rest sorted; list items that are
maps (partners) get the same treatment with their "id" first. toYaml alone sorts every
key, which makes the rendered gateway.yaml hard to read.
Call with (dict "map" $m "order" $keys).
*/}}
{{- define "igsp-gateway.orderedYaml" -}}
{{- $m := .map }}
{{- $keys := list }}
{{- range .order }}{{ if hasKey $m . }}{{ $keys = append $keys . }}{{ end }}{{ end }}
{{- range keys $m | sortAlpha }}{{ if not (has . $keys) }}{{ $keys = append $keys . }}{{ end }}{{ end }}
{{- range $keys }}
{{- $v := get $m . }}
{{- if and (kindIs "slice" $v) $v (kindIs "map" (first $v)) }}
{{ . }}:
{{- range $v }}
{{- $item := include "igsp-gateway.orderedYaml" (dict "map" . "order" (list "id" "face" "mapping" "api_key" "secrets" "hooks_url" "allowed_ips")) }}
- {{ $item | trim | indent 2 | trimPrefix "  " }}
{{- end }}
{{- else }}
{{ dict . $v | toYaml }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Keys the Secret (chart-made or existing) must provide, as a list of environment variable
names (IGSP_ADMIN_TOKEN is optional and not listed): the Redis password, the partners'
keys, then every ${VAR} the partners' mappings require that extraEnv does not set.
*/}}
{{- define "igsp-gateway.secretKeys" -}}
{{- $keys := list }}
{{- $x := .Values.redis.external }}
{{- if and (or .Values.redis.password (and .Values.redis.internal.enabled .Values.redis.internal.auth) (contains "${REDIS_PASSWORD}" .Values.redis.url) (and $x.mode $x.auth)) (not $x.passwordSecret.name) }}
{{- $keys = append $keys "REDIS_PASSWORD" }}
{{- end }}
{{- range .Values.partners }}
{{- $env := include "igsp-gateway.partnerEnvPrefix" .id }}
{{- $keys = append $keys (printf "%s_API_KEY" $env) }}
{{- $keys = append $keys (printf "%s_SECRET" $env) }}
{{- if or .previousSecret .rotating }}
{{- $keys = append $keys (printf "%s_SECRET_PREVIOUS" $env) }}
{{- end }}
{{- end }}
{{- $extra := include "igsp-gateway.extraEnvNames" . | fromYamlArray }}
{{- range $var, $_ := include "igsp-gateway.mappingEnv" . | fromYaml }}
{{- if not (or (has $var $extra) (has $var $keys)) }}
{{- $keys = append $keys $var }}
{{- end }}
{{- end }}
{{- toYaml $keys }}
{{- end }}

{{/*
Labels of the `helm test` pod: the release's, but not the gateway's selector labels, so
neither the Services, the PodDisruptionBudget nor the NetworkPolicy select it.
*/}}
{{- define "igsp-gateway.testLabels" -}}
helm.sh/chart: {{ include "igsp-gateway.chart" . }}
app.kubernetes.io/name: {{ include "igsp-gateway.name" . | trunc 58 | trimSuffix "-" }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/part-of: {{ include "igsp-gateway.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The public paths the Ingress routes when a host lists none, as a YAML list of
{path, pathType}: the hooks path for platform-face partners, the iGSP mount and the legacy
callbacks (/legacy/<mapping>/…) for provider-face partners; all of them with no partner.
/metrics and /admin/ are on the internal port, which no Ingress reaches.
*/}}
{{- define "igsp-gateway.publicPaths" -}}
{{- $faces := dict }}
{{- range .Values.partners }}{{ $_ := set $faces .face true }}{{ end }}
{{- $all := not .Values.partners }}
{{- $paths := list }}
{{- if or $all $faces.platform }}
{{- $paths = append $paths (dict "path" .Values.gateway.platformFace.hooksPath "pathType" "Exact") }}
{{- end }}
{{- if or $all $faces.provider }}
{{- $paths = append $paths (dict "path" .Values.gateway.providerFace.mount "pathType" "Prefix") }}
{{- $paths = append $paths (dict "path" "/legacy" "pathType" "Prefix") }}
{{- end }}
{{- toYaml $paths }}
{{- end }}

{{/*
The Deployment's replica count while the HPA is on: the count the Deployment runs with now
(read from the cluster), never below autoscaling.minReplicas, so a `helm upgrade` neither
resets what the HPA chose nor, when the HPA is first enabled, drops `spec.replicas` (which
Kubernetes would default to 1, scaling the release down until the HPA reacts). Empty when
there is no such Deployment yet (first install, `helm template`): the HPA sets the count.
Call with (dict "live" <Deployment or empty dict> "min" <minReplicas>).
*/}}
{{- define "igsp-gateway.replicasUnderHpa" -}}
{{- $live := .live | default dict }}
{{- $spec := $live.spec | default dict }}
{{- if hasKey $spec "replicas" }}
{{- max (int $spec.replicas) (int .min) }}
{{- end }}
{{- end }}

{{/*
A Kubernetes memory quantity ("256Mi", "1Gi", "512M", "1000000") in bytes, as an integer.
*/}}
{{- define "igsp-gateway.bytes" -}}
{{- $q := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $number $q }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if not (and $number (hasKey $units $unit)) }}
{{- fail (printf "cannot read the memory quantity %q: use e.g. 256Mi or 1Gi" $q) }}
{{- end }}
{{- mulf (float64 $number) (get $units $unit) | int64 }}
{{- end }}

{{/*
The required ${VAR} references of the mapping files the partners use, as a YAML map
VAR -> [mapping files], comment lines left out. ${VAR:-default} is optional and not listed.
*/}}
{{- define "igsp-gateway.mappingEnv" -}}
{{- $files := include "igsp-gateway.mappingFiles" . | fromYaml }}
{{- $used := dict }}
{{- range .Values.partners }}{{ $_ := set $used .mapping true }}{{ end }}
{{- $env := dict }}
{{- range $name := keys $used | sortAlpha }}
{{- $text := regexReplaceAll "(?m)^\\s*#.*$" (get $files $name | default "" | toString) "" }}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" $text -1 }}
{{- $var := trimSuffix "}" (trimPrefix "${" .) }}
{{- $_ := set $env $var (append (get $env $var | default list) $name | uniq) }}
{{- end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
Names extraEnv sets (value or valueFrom): mapping variables it provides need no Secret key.
*/}}
{{- define "igsp-gateway.extraEnvNames" -}}
{{- $names := list }}
{{- range .Values.extraEnv }}{{ $names = append $names .name }}{{ end }}
{{- toYaml $names }}
{{- end }}

{{/*
envFrom and env of the gateway container (and of the validate init container).
*/}}
{{- define "igsp-gateway.containerEnv" -}}
envFrom:
  - secretRef:
      name: {{ include "igsp-gateway.secretName" . }}
  {{- with .Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
env:
  - name: PYTHONDONTWRITEBYTECODE
    value: "1"
  {{- $x := .Values.redis.external }}
  {{- if and $x.mode $x.auth $x.passwordSecret.name }}
  # The external Redis's password, from its own Secret (store.password: ${REDIS_PASSWORD}).
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ $x.passwordSecret.name }}
        key: {{ $x.passwordSecret.key }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
A PodDisruptionBudget number or percentage of "total" pods, rounded up as Kubernetes does.
Call with (dict "value" <int or "N%"> "total" <replicas>).
*/}}
{{- define "igsp-gateway.scaled" -}}
{{- $v := toString .value }}
{{- if hasSuffix "%" $v }}
{{- ceil (divf (mulf (trimSuffix "%" $v | float64) .total) 100) | int }}
{{- else }}
{{- $v | int }}
{{- end }}
{{- end }}

{{/*
The volume mount of the external Redis's CA Secret (redis.external.tls.caSecret), if any.
*/}}
{{- define "igsp-gateway.redisTlsMount" -}}
{{- $x := .Values.redis.external }}
{{- if and $x.mode $x.tls.enabled $x.tls.caSecret.name (not .Values.redis.url) }}
- name: redis-tls
  mountPath: {{ $x.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
