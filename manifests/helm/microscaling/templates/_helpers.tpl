{{- define "microscaling.labels" -}}
app.kubernetes.io/name: microscaling
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "microscaling.selector" -}}
app.kubernetes.io/name: microscaling
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}


{{- /* microscaling.lease is the Lease of shard i (list $ i): the controller
adds -INDEX-of-COUNT to --leader-elect-lease-name when sharded. */ -}}
{{- define "microscaling.lease" -}}
{{- $ := index . 0 }}{{ $i := index . 1 }}{{ $n := int $.Values.shards -}}
{{ $.Values.controller.leaseName }}{{ if gt $n 1 }}-{{ $i }}-of-{{ $n }}{{ end }}
{{- end -}}
