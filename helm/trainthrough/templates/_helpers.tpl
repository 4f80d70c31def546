{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "trainthrough.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trainthrough.selectorLabels" -}}
app.kubernetes.io/name: trainthrough-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trainthrough.labels" -}}
{{ include "trainthrough.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: trainthrough
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "trainthrough.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trainthrough.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "trainthrough.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/*
What the operator does, and nothing more (tests/test_rbac.py records every call the real
operator makes and compares): its TrainingJobs and their status; the objects of each job
(runtime/kube.py); kopf's peering and Events. It holds what the chaos Role it creates
grants (pods get/list/delete, events create, trainingjobs get), as Kubernetes requires.
*/}}
{{/* kopf notices new and changed CRDs (cluster-scoped: a ClusterRole in every install). */}}
{{- define "trainthrough.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}

{{- define "trainthrough.operatorRules" -}}
- apiGroups: [trainthrough.io]
  resources: [trainingjobs]
  # delete: a finished job past its spec.runPolicy.ttlSecondsAfterFinished
  verbs: [get, list, watch, patch, delete]
- apiGroups: [trainthrough.io]
  resources: [trainingjobs/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  # get, patch: the operator calls neither; it holds them to grant them to the chaos Job's
  # Role (RBAC: a Role may grant only what its creator holds)
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, persistentvolumeclaims, serviceaccounts]
  verbs: [create]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [secrets]
  # create: each job's token Secret; get: that token and, with spec.security.tls, the job's
  # certificate, presented when the operator calls the job's PS (no list, no watch)
  verbs: [create, get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create]
{{- end -}}
