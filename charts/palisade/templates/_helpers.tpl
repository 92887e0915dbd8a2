{{/* Chart name, overridable. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "palisade.fullname" -}}
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

{{- define "palisade.operatorName" -}}
{{- printf "%s-operator" (include "palisade.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "palisade.agentName" -}}
{{- printf "%s-agent" (include "palisade.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "palisade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "palisade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: palisade
{{- end }}

{{/* Selector labels; $component is "operator" or "agent". */}}
{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "palisade.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "palisade.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Secrets with the operator's serving certificate and the agents' client certificate. */}}
{{- define "palisade.operatorTlsSecret" -}}
{{- printf "%s-tls" (include "palisade.operatorName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "palisade.agentTlsSecret" -}}
{{- printf "%s-tls" (include "palisade.agentName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The DNS names agents reach the operator by (its Service). */}}
{{- define "palisade.operatorDnsNames" -}}
{{- $svc := include "palisade.operatorName" . -}}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson }}
{{- end }}
