{{- define "vd.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "vd.serviceAccountName" -}}
{{ default (include "vd.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "vd.selectorLabels" -}}
app.kubernetes.io/name: videodelivery-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vd.labels" -}}
{{ include "vd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
