{{- define "vd.name" -}}
{{ default .Chart.Name .Values.nameOverride | trunc 54 | trimSuffix "-" }}
{{- end }}

{{- /* <release>-<name>, or <release> alone when it already contains the name; fullnameOverride replaces both. */ -}}
{{- define "vd.fullname" -}}
{{- if .Values.fullnameOverride }}{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "vd.name" . }}
{{- if contains $name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}
{{- end }}

{{- define "vd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "vd.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}{{ .Values.serviceAccount.name }}
{{- else }}{{ fail "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount the operator runs as, which the chart's roles are bound to" }}
{{- end }}
{{- end }}

{{- /* The selector of the operator's pods: immutable in a Deployment, so its default never changes. */ -}}
{{- define "vd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vd.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vd.labels" -}}
{{ include "vd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- /*
  More than one replica without leader election is refused: two operators at once give a new VideoDelivery two
  different first keys, one silently replacing the other.
*/ -}}
{{- define "vd.checkLeaderElection" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicas=%v needs leaderElection.enabled=true: without it every replica reconciles at once and a new VideoDelivery can get two different first keys, one silently replacing the other. Set replicas=1, or enable leader election" .Values.replicas) }}
{{- end }}
{{- end }}
