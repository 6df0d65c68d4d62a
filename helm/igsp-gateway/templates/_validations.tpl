{{/*
Render-time checks the schema cannot express. Each message names the value and the fix.
Included from deployment.yaml so every install and upgrade runs them.
*/}}
{{- define "igsp-gateway.validate" -}}
{{- $redis := include "igsp-gateway.usesRedis" . }}
{{- if and (not $redis) (gt (int .Values.replicaCount) 1) (not .Values.autoscaling.enabled) }}
{{- fail (printf "replicaCount=%d needs a shared store: set redis.url, redis.external.mode or redis.internal.enabled=true (SQLite is single-node)" (int .Values.replicaCount)) }}
{{- end }}
{{- if and (not $redis) .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1) }}
{{- fail (printf "autoscaling.maxReplicas=%d needs a shared store: set redis.url, redis.external.mode or redis.internal.enabled=true (SQLite is single-node)" (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas=%d is greater than autoscaling.maxReplicas=%d: lower minReplicas or raise maxReplicas" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- $x := .Values.redis.external }}
{{- if $x.mode }}
{{- if .Values.redis.url }}
{{- fail (printf "redis.url and redis.external.mode=%s are both set: describe the external Redis one way (unset redis.url to use redis.external)" $x.mode) }}
{{- end }}
{{- if .Values.redis.internal.enabled }}
{{- fail (printf "redis.external.mode=%s and redis.internal.enabled=true are both set: use one store" $x.mode) }}
{{- end }}
{{- if not $x.hosts }}
{{- fail (printf "redis.external.mode=%s needs redis.external.hosts (host:port of the %s)" $x.mode (get (dict "standalone" "Redis server" "sentinel" "sentinels" "cluster" "cluster nodes") $x.mode)) }}
{{- end }}
{{- if and (eq $x.mode "standalone") (gt (len $x.hosts) 1) }}
{{- fail (printf "redis.external.mode=standalone takes one host, got %d in redis.external.hosts: use mode=sentinel or mode=cluster for more" (len $x.hosts)) }}
{{- end }}
{{- if and (eq $x.mode "sentinel") (not $x.sentinelService) }}
{{- fail "redis.external.mode=sentinel needs redis.external.sentinelService (the name of the master the sentinels monitor)" }}
{{- end }}
{{- if and (ne $x.mode "sentinel") $x.sentinelService }}
{{- fail (printf "redis.external.sentinelService is set but redis.external.mode=%s: use mode=sentinel or unset it" $x.mode) }}
{{- end }}
{{- if and (eq $x.mode "cluster") (gt (int $x.db) 0) }}
{{- fail (printf "redis.external.db=%d with mode=cluster: a Redis Cluster has only database 0" (int $x.db)) }}
{{- end }}
{{- if and $x.auth (not $x.passwordSecret.name) (not .Values.redis.password) (not .Values.existingSecret) }}
{{- fail "redis.external.auth=true needs a password: set redis.external.passwordSecret.name (an existing Secret), redis.password, or existingSecret with key REDIS_PASSWORD; or set redis.external.auth=false" }}
{{- end }}
{{- if and $x.sentinelAuth (ne $x.mode "sentinel") }}
{{- fail (printf "redis.external.sentinelAuth=true but redis.external.mode=%s: it logs in to sentinels; use mode=sentinel or unset it" $x.mode) }}
{{- end }}
{{- if and $x.sentinelAuth (not $x.auth) }}
{{- fail "redis.external.sentinelAuth=true logs in to the sentinels with the Redis password, but redis.external.auth=false: set auth=true or sentinelAuth=false" }}
{{- end }}
{{- if and $x.tls.caSecret.name (not $x.tls.enabled) }}
{{- fail "redis.external.tls.caSecret.name is set but redis.external.tls.enabled=false: enable TLS or unset the CA Secret" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.internal.enabled }}
{{- fail "redis.url and redis.internal.enabled=true are both set: use one store (unset redis.url to use the in-chart Redis)" }}
{{- end }}
{{- if regexMatch "^(rediss?|rediss?\\+sentinel|rediss?\\+cluster)://[^@/]*:[^$@/][^@/]*@" .Values.redis.url }}
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
