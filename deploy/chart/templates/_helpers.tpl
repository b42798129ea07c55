{{/* The name every object of the release shares. */}}
{{- define "tel.name" -}}
traffic-manager
{{- end -}}

{{/* Labels on every object. */}}
{{- define "tel.labels" -}}
app: traffic-manager
app.kubernetes.io/name: traffic-manager
app.kubernetes.io/part-of: tel
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
