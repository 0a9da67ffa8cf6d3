{{/* Chart name, truncated to 63 characters (a label value). */}}
{{- define "rlhf-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "rlhf-operator.fullname" -}}
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

{{- define "rlhf-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rlhf-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlhf-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rlhf-operator.labels" -}}
helm.sh/chart: {{ include "rlhf-operator.chart" . }}
{{ include "rlhf-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rlhf-operator
{{- end }}

{{- define "rlhf-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rlhf-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion.
With global.imageRegistry set, it replaces the repository's registry (its first part when that names a
host: it has a dot or a port, or is localhost). Call with (list $image $). */}}
{{- define "rlhf-operator.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- $repository := $image.repository }}
{{- $registry := (($root.Values.global | default dict).imageRegistry) | default "" }}
{{- if $registry }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $parts = rest $parts }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) (join "/" $parts) }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches, comma separated ("" = all). Fails on an impossible combination. */}}
{{- define "rlhf-operator.watchNamespaces" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: list the namespaces the operator may work in" }}
{{- end }}
{{- join "," (uniq .Values.watchNamespaces) }}
{{- end }}

{{/* Rules of the operator's own work in the namespaces it watches: only the verbs it uses. */}}
{{- define "rlhf-operator.namespacedRules" -}}
# The RLHFJobs themselves: Kopf watches them and patches annotations (handler progress) and status.
- apiGroups: ["rlhf-operator.dev"]
  resources: ["rlhfjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["rlhf-operator.dev"]
  resources: ["rlhfjobs/status"]
  verbs: ["get", "patch", "update"]
# Batch stages are Jobs; the operator suspends, resumes and deletes them.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Stage pods are read, never written: their states and the policy's progress log.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Per-stage configuration, and the Service in front of a served reward model.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The served reward model.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A per-job reward-server token Secret, and a check that Secrets named in the spec exist. No list or
# watch: the operator never reads Secrets it was not told about.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
# Checks that the storage volume and the stage service account named in the spec exist.
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "serviceaccounts"]
  verbs: ["get"]
# Events on RLHFJobs (kubectl describe).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Rules Kopf itself needs cluster-wide, whatever the scope: discovering the CRD and the namespaces. */}}
{{- define "rlhf-operator.frameworkRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
