{{/*
Render-time checks the schema cannot express. Each message names the value and the fix.
Included from deployment.yaml so every install and upgrade runs them.
*/}}
{{- define "igsp-gateway.validate" -}}
{{- $redis := include "igsp-gateway.usesRedis" . }}
{{- if and (not $redis) (gt (int .Values.replicaCount) 1) (not .Values.autoscaling.enabled) }}
{{- fail (printf "replicaCount=%d needs a shared store: set redis.url or redis.internal.enabled=true (SQLite is single-node)" (int .Values.replicaCount)) }}
{{- end }}
{{- if and (not $redis) .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1) }}
{{- fail (printf "autoscaling.maxReplicas=%d needs a shared store: set redis.url or redis.internal.enabled=true (SQLite is single-node)" (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas=%d is greater than autoscaling.maxReplicas=%d: lower minReplicas or raise maxReplicas" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.internal.enabled }}
{{- fail "redis.url and redis.internal.enabled=true are both set: use one store (unset redis.url to use the in-chart Redis)" }}
{{- end }}
{{- if regexMatch "^(rediss?|redis\\+sentinel)://[^@/]*:[^$@/][^@/]*@" .Values.redis.url }}
{{- fail "redis.url contains a literal password and would be stored in a ConfigMap: write ${REDIS_PASSWORD} in the URL and set redis.password (or the existingSecret key REDIS_PASSWORD)" }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- if and (contains "${REDIS_PASSWORD}" .Values.redis.url) (not .Values.redis.password) }}
{{- fail "redis.url references ${REDIS_PASSWORD} but redis.password is empty: set redis.password or existingSecret" }}
{{- end }}
{{- if and .Values.redis.internal.enabled .Values.redis.internal.auth (not .Values.redis.password) }}
{{- fail "redis.internal.auth=true needs a password: set redis.password (or existingSecret with key REDIS_PASSWORD), or set redis.internal.auth=false" }}
{{- end }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not $pdb.minAvailable) (eq (toString $pdb.maxUnavailable) "") }}
{{- fail "podDisruptionBudget.enabled=true needs podDisruptionBudget.minAvailable or podDisruptionBudget.maxUnavailable" }}
{{- end }}
{{- if $pdb.enabled }}
{{- /* A budget that never allows an eviction blocks every node drain and cluster upgrade. */ -}}
{{- $replicas := ternary (int .Values.autoscaling.minReplicas) (int .Values.replicaCount) .Values.autoscaling.enabled }}
{{- $count := ternary (printf "autoscaling.minReplicas=%d" $replicas) (printf "replicaCount=%d" $replicas) .Values.autoscaling.enabled }}
{{- if and $pdb.minAvailable (gt $replicas 0) (ge (include "igsp-gateway.scaled" (dict "value" $pdb.minAvailable "total" $replicas) | int) $replicas) }}
{{- fail (printf "podDisruptionBudget.minAvailable=%v keeps all %d pods (%s): no eviction would ever be allowed and every node drain would block. Set minAvailable below the replica count, raise %s, or use podDisruptionBudget.maxUnavailable" $pdb.minAvailable $replicas $count (ternary "autoscaling.minReplicas" "replicaCount" .Values.autoscaling.enabled)) }}
{{- end }}
{{- if and (not $pdb.minAvailable) (gt $replicas 0) (lt (include "igsp-gateway.scaled" (dict "value" $pdb.maxUnavailable "total" $replicas) | int) 1) }}
{{- fail (printf "podDisruptionBudget.maxUnavailable=%v allows no pod to be evicted (%s): every node drain would block. Set it to at least 1" $pdb.maxUnavailable $count) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.gateway.port) (int .Values.gateway.internalPort) }}
{{- fail (printf "gateway.port and gateway.internalPort are both %d: /metrics and /admin/ must not share the public port; give gateway.internalPort another port" (int .Values.gateway.port)) }}
{{- end }}
{{- $mappings := include "igsp-gateway.mappingFiles" . | fromYaml }}
{{- if hasKey $mappings "gateway.yaml" }}
{{- fail "mappings: a mapping file cannot be named gateway.yaml (it would shadow the gateway config): rename it" }}
{{- end }}
{{- $ids := dict }}
{{- range $i, $p := .Values.partners }}
{{- if hasKey $ids $p.id }}
{{- fail (printf "partners[%d].id=%s is used twice: partner ids must be unique" $i $p.id) }}
{{- end }}
{{- $_ := set $ids $p.id true }}
{{- if not (hasKey $mappings $p.mapping) }}
{{- fail (printf "partners[%d].mapping=%s is not a known mapping file: add it under mappings or the chart's files/mappings/ (known: %s)" $i $p.mapping (keys $mappings | sortAlpha | join ", " | default "none")) }}
{{- end }}
{{- if and (eq $p.face "provider") (not $p.hooksUrl) }}
{{- fail (printf "partners[%d] (%s) has face=provider but no hooksUrl: set partners[%d].hooksUrl to the platform's iGSP hooks URL" $i $p.id $i) }}
{{- end }}
{{- if not $.Values.existingSecret }}
{{- if not $p.apiKey }}
{{- fail (printf "partners[%d].apiKey (%s) is empty: set it or use existingSecret" $i $p.id) }}
{{- end }}
{{- if not $p.secret }}
{{- fail (printf "partners[%d].secret (%s) is empty: set it or use existingSecret" $i $p.id) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
