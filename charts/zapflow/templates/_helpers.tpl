{{/*
Names, labels and the facts about each workload that values do not change.

Component-aware helpers take a dict: (dict "root" $ "component" "gateway"); without "component"
they describe the release as a whole (no component label).
*/}}

{{- define "zapflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zapflow.fullname" -}}
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

{{/* The name of one component's objects: <fullname>-<component>. */}}
{{- define "zapflow.componentName" -}}
{{- printf "%s-%s" (include "zapflow.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zapflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zapflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zapflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- /*
A workload's label selector. The shared conversation workload leaves out the pods of tenants'
dedicated conversation Deployments (the operator's; docs/operator.md), which carry its labels,
so that its Service and NetworkPolicy cover them, plus the tenant's.
*/}}
{{- define "zapflow.workloadSelector" -}}
matchLabels:
  {{- include "zapflow.selectorLabels" . | nindent 2 }}
{{- if eq (.component | default "") "conversation" }}
matchExpressions:
  - key: zapflow.io/tenant
    operator: DoesNotExist
{{- end }}
{{- end }}

{{- define "zapflow.labels" -}}
helm.sh/chart: {{ include "zapflow.chart" .root }}
{{ include "zapflow.selectorLabels" . }}
app.kubernetes.io/version: {{ include "zapflow.imageTag" .root | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: zapflow
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "zapflow.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | trunc 63 }}
{{- end }}

{{- define "zapflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "zapflow.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "zapflow.serviceAccountName" -}}
{{- $account := (index .root.Values .component).serviceAccount }}
{{- if $account.create }}
{{- default (include "zapflow.componentName" .) $account.name }}
{{- else }}
{{- default "default" $account.name }}
{{- end }}
{{- end }}

{{/*
What each workload is, from the code: the command it runs (`zapflow <args> --port <port>`), the
stores it connects to (its service's Needs), the Internet endpoints it calls, and the durable
consumers (services/zapflow/platform/catalogue.py) whose lag scales it. tests/deploy checks these
against the code.
*/}}
{{- define "zapflow.workloads" -}}
gateway:
  args: [gateway, --role, webhook]
  uses: [nats]
  tenants: true
  internet: []
  public: true
  consumers: []
egress:
  args: [gateway, --role, egress]
  uses: [nats, redis]
  tenants: true
  internet: [graphApi]
  consumers:
    - {stream: ZF_OUTBOUND, consumer: gateway-egress}
conversation:
  args: [conversation]
  uses: [nats, redis, postgresql]
  tenants: true
  internet: [llm]
  consumers:
    - {stream: ZF_INBOUND, consumer: conversation}
recorder:
  args: [recorder]
  uses: [nats, postgresql]
  tenants: false
  internet: []
  consumers:
    - {stream: ZF_INBOUND, consumer: store-inbound}
    - {stream: ZF_OUTBOUND, consumer: store-outbound}
    - {stream: ZF_STATUS, consumer: store-statuses}
    - {stream: ZF_EVENTS, consumer: store-turns}
    - {stream: ZF_EVENTS, consumer: store-results}
embedding:
  args: [embedding]
  uses: [nats, redis, postgresql]
  tenants: true
  internet: [llm]
  consumers:
    - {stream: ZF_EVENTS, consumer: embedding-turns}
handoff:
  args: [handoff]
  uses: [nats, redis, postgresql]
  tenants: true
  internet: [notifications]
  public: true
  consumers:
    - {stream: ZF_EVENTS, consumer: handoff-events}
    - {stream: ZF_EVENTS, consumer: handoff-notify}
scheduler:
  args: [scheduler]
  uses: [nats, redis, postgresql]
  tenants: true
  internet: []
  consumers: []
sandbox:
  # The sandbox binds loopback unless told otherwise: it is a development tool.
  args: [sandbox, --host, 0.0.0.0]
  uses: []
  tenants: true
  internet: []
  consumers: []
{{- end }}

{{/* The components this release runs, in a fixed order. */}}
{{- define "zapflow.components" -}}
{{- $components := list "gateway" "egress" "conversation" "recorder" "embedding" "handoff" "scheduler" }}
{{- if .Values.sandbox.enabled }}
{{- $components = append $components "sandbox" }}
{{- end }}
{{- toJson $components }}
{{- end }}

{{/* The Secret that holds a connection URL or token: the user's existing one, else the chart's. */}}
{{- define "zapflow.secretRef" -}}
{{- $existing := .existing }}
{{- if $existing.name -}}
name: {{ $existing.name }}
key: {{ .existingKey }}
{{- else -}}
name: {{ include "zapflow.fullname" .root }}
key: {{ .key }}
{{- end }}
{{- end }}

{{/* The URLs of the stores a component uses, as env entries from Secrets. */}}
{{- define "zapflow.connectionEnv" -}}
{{- $root := .root }}
{{- $variables := dict "nats" "ZAPFLOW_NATS_URL" "redis" "ZAPFLOW_REDIS_URL" "postgresql" "ZAPFLOW_DATABASE_URL" }}
{{- range .uses }}
{{- $store := index $root.Values . }}
- name: {{ index $variables . }}
  valueFrom:
    secretKeyRef:
      {{- include "zapflow.secretRef" (dict "root" $root "existing" $store.existingSecret "existingKey" $store.existingSecret.key "key" (printf "%s-url" .)) | nindent 6 }}
{{- end }}
{{- end }}

{{/* zapflow's own secrets; every process checks them in production. */}}
{{- define "zapflow.authEnv" -}}
{{- $existing := .Values.auth.existingSecret }}
- name: ZAPFLOW_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      {{- include "zapflow.secretRef" (dict "root" . "existing" $existing "existingKey" $existing.adminTokenKey "key" "admin-token") | nindent 6 }}
- name: ZAPFLOW_PSEUDONYM_SECRET
  valueFrom:
    secretKeyRef:
      {{- include "zapflow.secretRef" (dict "root" . "existing" $existing "existingKey" $existing.pseudonymSecretKey "key" "pseudonym-secret") | nindent 6 }}
{{- if ternary $existing.metricsTokenKey .Values.auth.metricsToken (not (empty $existing.name)) }}
- name: ZAPFLOW_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      {{- include "zapflow.secretRef" (dict "root" . "existing" $existing "existingKey" $existing.metricsTokenKey "key" "metrics-token") | nindent 6 }}
{{- end }}
{{- end }}

{{/* Whether the chart's own Secret has anything to hold. */}}
{{- define "zapflow.ownSecretNeeded" -}}
{{- $needed := false }}
{{- range list "nats" "redis" "postgresql" }}
{{- if not (index $.Values .).existingSecret.name }}
{{- $needed = true }}
{{- end }}
{{- end }}
{{- if not .Values.auth.existingSecret.name }}
{{- $needed = true }}
{{- end }}
{{- ternary "true" "" $needed }}
{{- end }}

{{/* A probe on the one HTTP port. */}}
{{- define "zapflow.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* NetworkPolicy rules: one rule per peer list, only when there are peers (an empty `to` admits everything). */}}
{{- define "zapflow.egressRule" -}}
{{- if .to }}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- toYaml .ports | nindent 4 }}
{{- end }}
{{- end }}

{{- define "zapflow.ingressRule" -}}
{{- if .from }}
- from:
    {{- toYaml .from | nindent 4 }}
  ports:
    - port: http
      protocol: TCP
{{- end }}
{{- end }}

{{/* A NetworkPolicy peer: the pods of one of this release's components. */}}
{{- define "zapflow.podPeer" -}}
podSelector:
  matchLabels:
    {{- include "zapflow.selectorLabels" . | nindent 4 }}
{{- end }}
