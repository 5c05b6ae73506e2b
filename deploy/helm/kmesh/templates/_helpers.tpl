{{/* Names and labels shared by the templates. */}}

{{- define "kmesh.name" -}}kmesh{{- end -}}

{{- define "kmesh.labels" -}}
app.kubernetes.io/name: kmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kmesh.selector" -}}
app.kubernetes.io/name: kmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app: kmesh
{{- end -}}

{{/* The tunnel's pods: apart from kmeshd's selector, so neither
DaemonSet adopts the other's pods. */}}
{{- define "kmesh.tunnelSelector" -}}
app.kubernetes.io/name: kmesh-tunnel
app.kubernetes.io/instance: {{ .Release.Name }}
app: kmesh-tunnel
{{- end -}}

{{- define "kmesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
