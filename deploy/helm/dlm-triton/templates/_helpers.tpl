{{- define "dlm-triton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dlm-triton.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dlm-triton.labels" -}}
{{ include "dlm-triton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Environment of docker/entrypoint.sh, the same in the init container and the server. */}}
{{- define "dlm-triton.env" -}}
- name: DLM_MODEL
  value: {{ .Values.model.dir | quote }}
- name: DLM_ENGINE_DIR
  value: {{ .Values.model.engineDir | quote }}
- name: DLM_WORKDIR
  value: /tmp/dlm
- name: DLM_FILL_ARGS
  value: {{ .Values.model.fillArgs | quote }}
- name: DLM_ADDRESS
  value: 0.0.0.0
- name: DLM_HTTP_PORT
  value: {{ .Values.server.httpPort | quote }}
- name: DLM_GRPC_PORT
  value: {{ .Values.server.grpcPort | quote }}
- name: DLM_METRICS_PORT
  value: {{ .Values.server.metricsPort | quote }}
{{- with .Values.server.adminKeySecret }}
- name: DLM_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: admin-key
{{- end }}
{{- end -}}

{{- define "dlm-triton.mounts" -}}
- name: storage
  mountPath: {{ .Values.storage.mountPath }}
- name: workdir
  mountPath: /tmp/dlm
{{- end -}}

{{/* .Values.resources plus nvidia.com/gpu: .Values.gpus in the limits. */}}
{{- define "dlm-triton.resources" -}}
{{- $r := deepCopy .Values.resources -}}
{{- if gt (int .Values.gpus) 0 -}}
{{- $_ := set $r "limits" (merge (dict "nvidia.com/gpu" (int .Values.gpus)) ($r.limits | default dict)) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}
