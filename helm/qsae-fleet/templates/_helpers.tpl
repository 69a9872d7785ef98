{{/* Names, labels, images and the environment every QSAE Fleet process shares. */}}

{{- define "qsae-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qsae-fleet.fullname" -}}
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

{{- define "qsae-fleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. Call with (dict "ctx" $ "component" "control-plane"). */}}
{{- define "qsae-fleet.labels" -}}
helm.sh/chart: {{ include "qsae-fleet.chart" .ctx }}
{{ include "qsae-fleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: qsae-fleet
{{- end }}

{{- define "qsae-fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qsae-fleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "qsae-fleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qsae-fleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qsae-fleet.secretName" -}}
{{- default (include "qsae-fleet.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Image reference. Call with (dict "ctx" $ "image" .Values.image.server). */}}
{{- define "qsae-fleet.image" -}}
{{- $registry := .ctx.Values.image.registry -}}
{{- $tag := .image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "qsae-fleet.mlflowServiceName" -}}
{{- printf "%s-mlflow" (include "qsae-fleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qsae-fleet.rayClusterName" -}}
{{- printf "%s-ray" (include "qsae-fleet.fullname" .) | trunc 48 | trimSuffix "-" }}
{{- end }}

{{/* What the dispatcher connects to: the in-chart RayCluster's head service (KubeRay names it
     <cluster>-head-svc), else ray.address. */}}
{{- define "qsae-fleet.rayAddress" -}}
{{- if .Values.ray.enabled -}}
{{- printf "ray://%s-head-svc:10001" (include "qsae-fleet.rayClusterName" .) -}}
{{- else -}}
{{- .Values.ray.address -}}
{{- end -}}
{{- end }}

{{- define "qsae-fleet.mlflowTrackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s:%d" (include "qsae-fleet.mlflowServiceName" .) (int .Values.mlflow.port) -}}
{{- else -}}
{{- .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end }}

{{/* Secret-backed FLEET_* variables (the keys documented in values.yaml under secrets). */}}
{{- define "qsae-fleet.secretEnv" -}}
- name: FLEET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "qsae-fleet.secretName" . }}
      key: database-url
- name: FLEET_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "qsae-fleet.secretName" . }}
      key: redis-url
      optional: true
- name: FLEET_BOOTSTRAP_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "qsae-fleet.secretName" . }}
      key: bootstrap-admin-key
      optional: true
{{- end }}

{{/* Volumes every server-side pod mounts: scratch space (read-only root filesystem), the signing
     key, and (withArtifacts) the shared artifact store. Call with (dict "ctx" $ "withArtifacts" true). */}}
{{- define "qsae-fleet.volumes" -}}
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {}
- name: signing-key
  secret:
    secretName: {{ include "qsae-fleet.secretName" .ctx }}
    defaultMode: 0440
    items:
      - key: signing.key
        path: signing.key
{{- if .withArtifacts }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ .ctx.Values.artifacts.persistence.existingClaim | default (printf "%s-artifacts" (include "qsae-fleet.fullname" .ctx)) }}
{{- end }}
{{- end }}

{{- define "qsae-fleet.volumeMounts" -}}
- name: state
  mountPath: /var/lib/qsae
- name: tmp
  mountPath: /tmp
- name: signing-key
  mountPath: /etc/qsae/keys
  readOnly: true
{{- if .withArtifacts }}
- name: artifacts
  mountPath: /var/lib/qsae/artifacts
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the QSAE Fleet Deployments. */}}
{{- define "qsae-fleet.podSpecCommon" -}}
serviceAccountName: {{ include "qsae-fleet.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod annotations: restart pods when the ConfigMap or the chart's Secret changes. */}}
{{- define "qsae-fleet.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Environment of the Ray head and workers: the FLEET_* settings Ray tasks read, and Ray's own. */}}
{{- define "qsae-fleet.rayEnv" -}}
- name: FLEET_STATE_DIR
  value: /var/lib/qsae
- name: FLEET_DATA_DIR
  value: /usr/share/datasets/fashion-mnist
- name: FLEET_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
# Ray's token auth is off; the NetworkPolicy limits who reaches the Ray ports.
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
