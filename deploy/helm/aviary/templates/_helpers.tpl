{{/*
Names, labels and the pieces every Aviary workload shares. Each component's template passes a
dict to "aviary.deployment", "aviary.service" and "aviary.pdb":
  root       the top-level context ($)
  component  scheduler | analyzer | router-agent | notifier | gate
  v          the component's values (.Values.scheduler, ...)
*/}}

{{- define "aviary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aviary.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", short enough for a Service name. */}}
{{- define "aviary.componentName" -}}
{{- printf "%s-%s" (include "aviary.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aviary.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; takes the top-level context. */}}
{{- define "aviary.labels" -}}
helm.sh/chart: {{ include "aviary.chart" . }}
app.kubernetes.io/name: {{ include "aviary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aviary
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; takes (dict "root" $ "component" NAME). */}}
{{- define "aviary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aviary.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aviary.componentLabels" -}}
{{ include "aviary.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aviary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aviary.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: the chart never falls back to the namespace's default ServiceAccount" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The router agent's own ServiceAccount when it needs API access, so the RBAC rules bind to it
alone; otherwise the chart's shared one.
*/}}
{{- define "aviary.routerAgent.serviceAccountName" -}}
{{- if and .Values.serviceAccount.create (include "aviary.anyRouterProvider" .) -}}
{{- include "aviary.componentName" (dict "root" . "component" "router-agent") -}}
{{- else -}}
{{- include "aviary.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/* "<registry>/<repository>:<tag>"; takes (dict "root" $ "v" COMPONENT_VALUES). */}}
{{- define "aviary.image" -}}
{{- $tag := .v.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .v.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .v.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* True (non-empty) when any Kubernetes router provider is enabled. */}}
{{- define "aviary.anyRouterProvider" -}}
{{- $p := .Values.routerAgent.providers -}}
{{- if and .Values.routerAgent.enabled (or $p.gatewayApi $p.istio $p.smi $p.nginxIngress $p.endpointSlices) -}}true{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
NATS: URL and credentials from a Secret.
--------------------------------------------------------------------------------------- */}}

{{- define "aviary.nats.secretName" -}}
{{- if .Values.nats.existingSecret -}}
{{- .Values.nats.existingSecret -}}
{{- else -}}
{{- printf "%s-nats-auth" (include "aviary.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The Secret of per-service NATS passwords (method perService), one key per user. */}}
{{- define "aviary.nats.usersSecretName" -}}
{{- if .Values.nats.auth.perService.existingSecret -}}
{{- .Values.nats.auth.perService.existingSecret -}}
{{- else -}}
{{- printf "%s-nats-users" (include "aviary.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The NATS users of method perService, read from the generated permissions file (one
`AVIARY_NATS_PASSWORD_<USER>` per user), so the chart names no user the code does not define.
*/}}
{{- define "aviary.nats.users" -}}
{{- range regexFindAll "AVIARY_NATS_PASSWORD_[A-Z_]+" (.Files.Get "files/nats-permissions.conf") -1 }}
- {{ trimPrefix "AVIARY_NATS_PASSWORD_" . | lower | replace "_" "-" }}
{{- end }}
{{- end -}}

{{- define "aviary.nats.bundledName" -}}
{{- printf "%s-nats" (include "aviary.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The URL the created Secret holds: the bundled server's Service, else `nats.url`. */}}
{{- define "aviary.nats.url" -}}
{{- if .Values.nats.bundled.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "aviary.nats.bundledName" .) .Release.Namespace -}}
{{- else -}}
{{- required "nats.url is required (or nats.existingSecret, or nats.bundled.enabled)" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* Environment variables for the NATS connection; takes the top-level context. */}}
{{- define "aviary.nats.env" -}}
{{- $secret := include "aviary.nats.secretName" . -}}
{{- $keys := .Values.nats.secretKeys -}}
{{- $method := .Values.nats.auth.method -}}
- name: AVIARY_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.url }}
- name: AVIARY_NATS_CONNECT_TIMEOUT
  value: {{ .Values.nats.connectTimeout | quote }}
{{- if eq $method "userPassword" }}
- name: AVIARY_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.user }}
- name: AVIARY_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.password }}
{{- else if eq $method "token" }}
- name: AVIARY_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.token }}
{{- else if eq $method "creds" }}
- name: AVIARY_NATS_CREDS_FILE
  value: /etc/aviary/nats-auth/{{ $keys.creds }}
{{- else if eq $method "nkey" }}
- name: AVIARY_NATS_NKEY_SEED_FILE
  value: /etc/aviary/nats-auth/{{ $keys.nkeySeed }}
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: AVIARY_NATS_TLS_CA_FILE
  value: /etc/aviary/nats-tls/{{ .Values.nats.tls.caKey }}
{{- if .Values.nats.tls.clientCert }}
- name: AVIARY_NATS_TLS_CERT_FILE
  value: /etc/aviary/nats-tls/tls.crt
- name: AVIARY_NATS_TLS_KEY_FILE
  value: /etc/aviary/nats-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "aviary.nats.volumes" -}}
{{- $method := .Values.nats.auth.method -}}
{{- if or (eq $method "creds") (eq $method "nkey") }}
- name: nats-auth
  secret:
    secretName: {{ include "aviary.nats.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ ternary .Values.nats.secretKeys.creds .Values.nats.secretKeys.nkeySeed (eq $method "creds") }}
        path: {{ ternary .Values.nats.secretKeys.creds .Values.nats.secretKeys.nkeySeed (eq $method "creds") }}
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "nats.tls.secretName is required with nats.tls.enabled" .Values.nats.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "aviary.nats.volumeMounts" -}}
{{- $method := .Values.nats.auth.method -}}
{{- if or (eq $method "creds") (eq $method "nkey") }}
- name: nats-auth
  mountPath: /etc/aviary/nats-auth
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: /etc/aviary/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Workload pieces.
--------------------------------------------------------------------------------------- */}}

{{/* Pod affinity: the user's, else anti-affinity over nodes per `antiAffinity`. */}}
{{- define "aviary.affinity" -}}
{{- if .v.affinity }}
{{- toYaml .v.affinity }}
{{- else if eq .v.antiAffinity "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "aviary.selectorLabels" . | nindent 10 }}
{{- else if eq .v.antiAffinity "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "aviary.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end -}}

{{/*
A Deployment for one component. Besides root/component/v it takes:
  serviceAccountName  overrides the chart's shared ServiceAccount
  env           extra env entries (YAML list as a string)
  ports         container ports besides `admin` (YAML list as a string)
  volumes       extra volumes (YAML list as a string)
  volumeMounts  extra mounts (YAML list as a string)
  checksum      string whose hash goes into a pod annotation (config rolls the pods)
  apiToken      mount the ServiceAccount token (only where RBAC is needed)
*/}}
{{- define "aviary.deployment" -}}
{{- $root := .root -}}
{{- $v := .v -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "aviary.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aviary.componentLabels" . | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "aviary.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "aviary.componentLabels" . | nindent 8 }}
      annotations:
        {{- if .checksum }}
        checksum/config: {{ .checksum | sha256sum }}
        {{- end }}
        checksum/nats-secret: {{ include (print $root.Template.BasePath "/nats-secret.yaml") $root | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccountName | default (include "aviary.serviceAccountName" $root) }}
      automountServiceAccountToken: {{ .apiToken | default false }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ add (div $root.Values.drainTimeoutMs 1000) 5 }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with (include "aviary.affinity" . | trim) }}
      affinity:
        {{- . | nindent 8 }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "aviary.image" . }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- with $v.extraArgs }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            - name: AVIARY_ADMIN_ADDR
              value: "0.0.0.0:{{ $root.Values.admin.port }}"
            - name: AVIARY_LOG
              value: {{ $root.Values.log.level | quote }}
            - name: AVIARY_LOG_JSON
              value: {{ $root.Values.log.json | quote }}
            - name: AVIARY_DRAIN_TIMEOUT
              value: {{ printf "%dms" (int64 $root.Values.drainTimeoutMs) | quote }}
            {{- with $root.Values.otlpEndpoint }}
            - name: AVIARY_OTLP_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            - name: AVIARY_NATS_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- include "aviary.nats.env" $root | nindent 12 }}
            {{- if eq $root.Values.nats.auth.method "perService" }}
            {{- /* Each component is the NATS user of its name (deploy/nats/permissions.conf). */}}
            - name: AVIARY_NATS_USER
              value: {{ .component | quote }}
            - name: AVIARY_NATS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ include "aviary.nats.usersSecretName" $root }}
                  key: {{ .component }}
            {{- end }}
            {{- if has .component (list "scheduler" "router-agent" "notifier" "gate") }}
            {{- /* The components that create streams and buckets at start. */}}
            - name: AVIARY_JS_REPLICAS
              value: {{ $root.Values.nats.jetstream.replicas | quote }}
            {{- end }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: admin
              containerPort: {{ $root.Values.admin.port }}
              protocol: TCP
            {{- with .ports }}
            {{- . | nindent 12 }}
            {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            initialDelaySeconds: 5
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with (include "aviary.nats.volumeMounts" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with (include "aviary.nats.volumes" $root | trim) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/*
A Service for one component: the admin port plus `ports` (YAML list of ServicePorts as a
string). Takes root/component/v, and optionally `type` and `annotations`.
*/}}
{{- define "aviary.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "aviary.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "aviary.componentLabels" . | nindent 4 }}
    aviary.dev/metrics: "true"
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .type | default "ClusterIP" }}
  selector:
    {{- include "aviary.selectorLabels" . | nindent 4 }}
  ports:
    - name: admin
      port: {{ .root.Values.admin.port }}
      targetPort: admin
      protocol: TCP
    {{- with .ports }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for one component, when enabled. */}}
{{- define "aviary.pdb" -}}
{{- if .v.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "aviary.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "aviary.componentLabels" . | nindent 4 }}
spec:
  {{- if hasKey .v.podDisruptionBudget "minAvailable" }}
  minAvailable: {{ .v.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .v.podDisruptionBudget.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "aviary.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}
