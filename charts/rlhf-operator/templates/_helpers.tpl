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

{{/* The namespaces the operator watches, comma separated ("" = all). Fails on an impossible combination.
When it is not empty, the operator's RBAC is a Role in each of them, whatever rbac.scope says. */}}
{{- define "rlhf-operator.watchNamespaces" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: list the namespaces the operator may work in" }}
{{- end }}
{{- join "," (uniq .Values.watchNamespaces) }}
{{- end }}

{{/* Rules of the operator's own work in the namespaces it watches: only the verbs it uses (a unit
test lists them; the real operator runs a job as this account in test_chart_rbac_operator.py). */}}
{{- define "rlhf-operator.namespacedRules" -}}
# The RLHFJobs themselves: Kopf lists and watches them; the operator patches the artifact-cleanup
# finalizer (metadata) and the status.
- apiGroups: ["rlhf-operator.dev"]
  resources: ["rlhfjobs"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["rlhf-operator.dev"]
  resources: ["rlhfjobs/status"]
  verbs: ["patch"]
# Children carry an ownerReference with blockOwnerDeletion: clusters that enforce
# OwnerReferencesPermissionEnforcement require update on the owner's finalizers for that.
- apiGroups: ["rlhf-operator.dev"]
  resources: ["rlhfjobs/finalizers"]
  verbs: ["update"]
# Batch stages are Jobs; the operator suspends, resumes and deletes them.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Stage pods are read, never written: their states and the policy's progress log (a bounded tail).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Per-stage configuration (immutable; the garbage collector removes it with the RLHFJob).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create"]
# The Service in front of a served reward model (removed when the policy is done) and the
# rendezvous Service of a multi-node stage.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "delete"]
# The served reward model, and its PodDisruptionBudget.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "delete"]
# One NetworkPolicy per RLHFJob: its pods talk only to each other (docs/security.md).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create"]
# A per-job reward-server token Secret, and a check that Secrets named in the spec exist and opt in.
# No list or watch: the operator never reads Secrets it was not told about.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# Checks that the storage volume and the stage service account named in the spec exist.
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "serviceaccounts"]
  verbs: ["get"]
# Events on RLHFJobs (kubectl describe): the operator's, and Kopf's own warnings.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
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

{{/* The Lease the operator replicas hold for leader election. */}}
{{- define "rlhf-operator.leaseName" -}}
{{- printf "%s-leader" (include "rlhf-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fails when more than one replica would act at once. */}}
{{- define "rlhf-operator.checkReplicas" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without it every replica would act" }}
{{- end }}
{{- end }}
