{{/* Names: a release called "slimline" gives "slimline-mlflow", others "<release>-slimline-mlflow". */}}
{{- define "slimline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slimline.fullname" -}}
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

{{- define "slimline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every pod of the release carries: the default-deny policy selects them. */}}
{{- define "slimline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slimline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slimline.labels" -}}
helm.sh/chart: {{ include "slimline.chart" . }}
{{ include "slimline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slimline
{{- end }}

{{/* Labels and selector of one component: (dict "ctx" $ "component" "mlflow"). */}}
{{- define "slimline.componentLabels" -}}
{{ include "slimline.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "slimline.componentSelector" -}}
{{ include "slimline.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images: "repository:tag", the tag defaulting to appVersion. */}}
{{- define "slimline.taskImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "slimline.mlflowImage" -}}
{{- $repository := default .Values.image.repository .Values.mlflow.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.mlflow.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{- define "slimline.mlflowPullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.mlflow.image.pullPolicy }}
{{- end }}

{{- define "slimline.agentImage" -}}
{{- printf "%s:%s" .Values.agents.image.repository (default .Chart.AppVersion .Values.agents.image.tag) }}
{{- end }}

{{/*
Security contexts of every pod and container of the chart: the images run as uid 10001 and keep no
state on their root filesystem (scratch in an emptyDir at /tmp). Not configurable on purpose.
*/}}
{{- define "slimline.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "slimline.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "slimline.mlflowServiceAccount" -}}
{{- if .Values.mlflow.serviceAccount.create }}
{{- default (printf "%s-mlflow" (include "slimline.fullname" .)) .Values.mlflow.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.mlflow.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slimline.agentServiceAccount" -}}
{{- if .Values.agents.serviceAccount.create }}
{{- default (printf "%s-agent" (include "slimline.fullname" .)) .Values.agents.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agents.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the object-store credentials, or nothing when there are none. */}}
{{- define "slimline.objectStoreSecret" -}}
{{- $store := .Values.objectStore }}
{{- if $store.existingSecret }}
{{- $store.existingSecret }}
{{- else if or $store.accessKeyId $store.secretAccessKey }}
{{- if not (and $store.accessKeyId $store.secretAccessKey) }}
{{- fail "objectStore: set both accessKeyId and secretAccessKey (or name a Secret in objectStore.existingSecret)" }}
{{- end }}
{{- printf "%s-object-store" (include "slimline.fullname" .) }}
{{- end }}
{{- end }}

{{- define "slimline.settingsConfigMap" -}}
{{- printf "%s-settings" (include "slimline.fullname" .) }}
{{- end }}

{{/* MLflow's Service and the URI clients use. */}}
{{- define "slimline.mlflowService" -}}
{{- printf "%s-mlflow" (include "slimline.fullname" .) }}
{{- end }}

{{- define "slimline.mlflowUri" -}}
{{- printf "http://%s.%s.svc:%d" (include "slimline.mlflowService" .) .Release.Namespace (int .Values.mlflow.port) }}
{{- end }}

{{/* Whether MLflow's database is SQLite on the data volume (one replica, Recreate updates). */}}
{{- define "slimline.mlflowSqlite" -}}
{{- if and (not .Values.mlflow.backendStore.existingSecret) (hasPrefix "sqlite:" .Values.mlflow.backendStore.uri) }}true{{ end }}
{{- end }}

{{/*
Host headers MLflow accepts: its Service under every name cluster DNS gives it, localhost for
`kubectl port-forward`, and what the user adds. MLflow refuses any other Host (DNS rebinding guard);
its default list has only localhost and private IP addresses, which Service names are not.
*/}}
{{- define "slimline.mlflowAllowedHosts" -}}
{{- $svc := include "slimline.mlflowService" . }}
{{- $ns := .Release.Namespace }}
{{- $all := list }}
{{- range list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) "localhost" "127.0.0.1" }}
{{- $all = append $all . }}
{{- $all = append $all (printf "%s:*" .) }}
{{- end }}
{{- /* the cluster domain, with or without a port */}}
{{- $all = append $all (printf "%s.%s.svc.*" $svc $ns) }}
{{- with .Values.mlflow.ingress.host }}
{{- $all = append $all . }}
{{- end }}
{{- range .Values.mlflow.allowedHosts }}
{{- $all = append $all . }}
{{- end }}
{{- join "," $all }}
{{- end }}

{{/* A NetworkPolicy peer from a client entry {podLabels, namespaceLabels}. */}}
{{- define "slimline.clientPeer" -}}
- podSelector:
    matchLabels:
      {{- toYaml .podLabels | nindent 6 }}
  {{- with .namespaceLabels }}
  namespaceSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end }}

{{/* MLflow's environment: its database from a value or a Secret, the store's endpoint and region. */}}
{{- define "slimline.mlflowEnv" -}}
- name: MLFLOW_BACKEND_STORE_URI
  {{- with .Values.mlflow.backendStore.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.mlflow.backendStore.existingSecretKey }}
  {{- else }}
  value: {{ .Values.mlflow.backendStore.uri | quote }}
  {{- end }}
{{- with .Values.objectStore.endpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
