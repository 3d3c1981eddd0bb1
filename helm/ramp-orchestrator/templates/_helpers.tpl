{{/*
Names, labels and the values derived from several settings. The templates use a small subset of
Go templates + Sprig (tests/test_deploy_static.py renders them with its own renderer of exactly
that subset, so keep to the functions already used here and in the other templates).
*/}}

{{- define "ramp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ramp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ramp.labels" -}}
app.kubernetes.io/name: {{ include "ramp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "ramp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ramp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ramp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding DATABASE_URL, RAMP_ADMIN_TOKEN (and RAY_AUTH_TOKEN). */}}
{{- define "ramp.secretName" -}}
{{- default (include "ramp.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{/* A hook-scoped Secret with DATABASE_URL alone, for the migrations Job (it runs before the
release's own Secret exists on a first install). */}}
{{- define "ramp.migrationsSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-migrations" (include "ramp.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "ramp.apiName" -}}
{{- printf "%s-api" (include "ramp.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ramp.pvcName" -}}
{{- default (printf "%s-storage" (include "ramp.fullname" .)) .Values.storage.existingClaim -}}
{{- end -}}

{{/* KubeRay derives pod and service names from it: keep it short. */}}
{{- define "ramp.rayClusterName" -}}
{{- printf "%s-ray" (include "ramp.fullname" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The Jobs API the service submits to: an external cluster, or our RayCluster's head Service
(KubeRay names it <raycluster>-head-svc). */}}
{{- define "ramp.rayAddress" -}}
{{- if .Values.ray.address -}}
{{- .Values.ray.address -}}
{{- else if .Values.ray.cluster.enabled -}}
{{- printf "http://%s-head-svc.%s.svc.cluster.local:8265" (include "ramp.rayClusterName" .) .Release.Namespace -}}
{{- else -}}
{{- fail "set ray.address (an existing cluster's Jobs API, http://HOST:8265) or ray.cluster.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "ramp.publicUrl" -}}
{{- if .Values.api.publicUrl -}}
{{- .Values.api.publicUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc.cluster.local:%d" (include "ramp.apiName" .) .Release.Namespace (.Values.service.port | int) -}}
{{- end -}}
{{- end -}}

{{- define "ramp.postgresqlHost" -}}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ramp.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- $auth := .Values.postgresql.auth -}}
{{- $password := required "postgresql.auth.password is required with the bundled PostgreSQL (postgresql.enabled=true)" $auth.password -}}
{{- /* urlquery writes a space as "+", which userinfo would read as a plus sign */ -}}
{{- $user := urlquery $auth.username | replace "+" "%20" -}}
{{- $pass := urlquery $password | replace "+" "%20" -}}
{{- printf "postgresql://%s:%s@%s:5432/%s" $user $pass (include "ramp.postgresqlHost" .) $auth.database -}}
{{- else -}}
{{- required "set externalDatabase.url (postgresql://USER:PASSWORD@HOST:5432/DB), postgresql.enabled=true or auth.existingSecret" .Values.externalDatabase.url -}}
{{- end -}}
{{- end -}}

{{/* A token from the values, else the one already in the release's Secret, else a new one. */}}
{{- define "ramp.keptToken" -}}
{{- $ctx := index . 0 -}}
{{- $key := index . 1 -}}
{{- $given := index . 2 -}}
{{- if $given -}}
{{- $given -}}
{{- else -}}
{{- $secret := lookup "v1" "Secret" $ctx.Release.Namespace (include "ramp.fullname" $ctx) | default dict -}}
{{- $data := get $secret "data" | default dict -}}
{{- if hasKey $data $key -}}
{{- get $data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Changes when the Secret's inputs change (generated tokens are kept, so it is stable). */}}
{{- define "ramp.secretChecksum" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret | sha256sum -}}
{{- else -}}
{{- list (include "ramp.databaseUrl" .) .Values.auth.adminToken .Values.ray.auth.mode .Values.ray.auth.token | toJson | sha256sum -}}
{{- end -}}
{{- end -}}

{{- define "ramp.rayTokenEnabled" -}}
{{- if eq .Values.ray.auth.mode "token" -}}true{{- end -}}
{{- end -}}

{{/* Environment shared by every Ray container (head, workers): the auth pinning and the data root. */}}
{{- define "ramp.rayEnv" -}}
- name: RAY_AUTH_MODE
  value: {{ .Values.ray.auth.mode | quote }}
{{- if include "ramp.rayTokenEnabled" . }}
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ramp.secretName" . }}
      key: RAY_AUTH_TOKEN
{{- end }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: RAMP_DATA_ROOT
  value: {{ printf "%s/datasets" .Values.storage.mountPath | quote }}
{{- end -}}

{{/* A Ray container's image, env, mounts and lifecycle (head and workers alike; each adds its own
resources). Argument: the root context. */}}
{{- define "ramp.rayContainerCommon" -}}
image: {{ include "ramp.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
env:
  {{- include "ramp.rayEnv" . | nindent 2 }}
volumeMounts:
  - name: shared
    mountPath: {{ .Values.storage.mountPath }}
  - name: dshm
    mountPath: /dev/shm
lifecycle:
  preStop:
    exec:
      command: ["/bin/sh", "-c", "ray stop"]
{{- end -}}

{{/* A Ray pod's security context, scheduling and volumes. Argument: (list $root $group). */}}
{{- define "ramp.rayPodCommon" -}}
{{- $root := index . 0 -}}
{{- $group := index . 1 -}}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: shared
    persistentVolumeClaim:
      claimName: {{ include "ramp.pvcName" $root }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $group.shmSize }}
{{- end -}}
