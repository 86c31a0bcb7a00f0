//! Reads rollout YAML into a [`Rollout`], reporting every problem with its field path.
//!
//! Flow: text → `serde_yaml::Value` (a syntax error becomes one `yaml: line L column C: …`
//! error) → a hand-written walk that collects structural problems (unknown fields, wrong types,
//! out-of-range numbers, bad durations) → [`Rollout::validate`] for the semantic ones. Problems
//! the walk already reported at a path are not repeated by validation. Never panics.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use crate::clusters::{ClusterPolicy, ClusterSpec};
use crate::duration::{HumanDuration, parse_duration};
use crate::error::{FieldError, ValidationErrors, Warning, field, index};
use crate::spec::{
    Alert, Analysis, AnalysisStep, ApprovalStep, CheckFailure, CheckStep, GatewayRef,
    HeaderRouteStep, IngressRef, Judge, MatchRule, Metadata, Metric, MetricProvider, MirrorStep,
    ObjectRef, OnInconclusive, OnNoData, PauseStep, ProviderRef, Rollout, RolloutSpec, ServiceSpec,
    SessionAffinity, Severity, Step, StringMatch, Target, TargetRef, ThresholdRange, Webhook,
    WebhookType, WorkloadKind,
};
use crate::strategy::Strategy;

/// Parses and validates a rollout document.
///
/// Returns every problem found, each as `<path>: <message>`: a YAML syntax error (path
/// `yaml`), unknown fields, wrong types, out-of-range values and semantic errors such as
/// `steps` together with `stepWeight`. Never panics, whatever the input. Fields that are
/// accepted but have no effect, as in Flagger, are dropped silently here; use
/// [`parse_rollout_with_warnings`] to see them.
pub fn parse_rollout(yaml: &str) -> Result<Rollout, ValidationErrors> {
    parse_rollout_with_warnings(yaml).map(|(r, _)| r)
}

/// [`parse_rollout`], also returning a [`Warning`] for each field that is accepted but ignored
/// or read as a default, as Flagger does ([`RolloutSpec::warnings`]), e.g.
/// `spec.analysis.maxWeight: ignored, iterations is set …`.
pub fn parse_rollout_with_warnings(
    yaml: &str,
) -> Result<(Rollout, Vec<Warning>), ValidationErrors> {
    let value: Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(e) => return Err(ValidationErrors(vec![yaml_error(&e)])),
    };
    rollout_from_value(&value)
}

/// [`parse_rollout_with_warnings`] for a document already read as YAML (one of several in a
/// file).
pub(crate) fn rollout_from_value(
    value: &Value,
) -> Result<(Rollout, Vec<Warning>), ValidationErrors> {
    let mut d = Decoder::default();
    let rollout = d.rollout(value);
    let mut errors = d.errors;
    if let Some(r) = &rollout {
        add_validation(r, &mut errors);
    }
    match rollout {
        Some(r) if errors.is_empty() => {
            let warnings = r.spec.warnings();
            Ok((r, warnings))
        }
        _ => Err(ValidationErrors(errors)),
    }
}

/// Appends the semantic problems of `r` to the structural `errors` the walk found, leaving out
/// those at or inside a field the walk already reported.
pub(crate) fn add_validation(r: &Rollout, errors: &mut Vec<FieldError>) {
    if let Err(v) = r.validate() {
        let structural = errors.len();
        for e in v.0 {
            let covered = errors[..structural]
                .iter()
                .any(|s| covers(&s.path, &e.path));
            if !covered && !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
}

/// True when an error at `reported` makes one at `path` redundant (same field or inside it).
fn covers(reported: &str, path: &str) -> bool {
    path == reported
        || path
            .strip_prefix(reported)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

pub(crate) fn yaml_error(e: &serde_yaml::Error) -> FieldError {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let msg = match text.find(&suffix) {
                Some(i) => format!("{}{}", &text[..i], &text[i + suffix.len()..]),
                None => text.clone(),
            };
            FieldError::new(
                "yaml",
                format!(
                    "line {} column {}: {}",
                    loc.line(),
                    loc.column(),
                    msg.trim()
                ),
            )
        }
        None => FieldError::new("yaml", text),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt fields.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The fields of one mapping, after unknown keys were reported.
pub(crate) struct Fields<'a> {
    pub(crate) map: &'a Mapping,
    pub(crate) path: String,
}

impl<'a> Fields<'a> {
    /// The value of `key`, treating an explicit `null` as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn path(&self, key: &str) -> String {
        field(&self.path, key)
    }
}

/// The walk's state: every structural problem found so far. [`crate::flagger`] walks Flagger's
/// resources with the same primitives.
#[derive(Default)]
pub(crate) struct Decoder {
    pub(crate) errors: Vec<FieldError>,
}

impl Decoder {
    pub(crate) fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.errors.push(FieldError::new(path, msg));
    }

    pub(crate) fn expected(&mut self, path: &str, what: &str, got: &Value) {
        self.err(path, format!("expected {what}, found {}", type_name(got)));
    }

    /// Checks `v` is a mapping with only `known` string keys; reports the others.
    pub(crate) fn fields<'a>(
        &mut self,
        v: &'a Value,
        path: &str,
        known: &[&str],
    ) -> Option<Fields<'a>> {
        let Value::Mapping(map) = v else {
            self.expected(path, "a mapping", v);
            return None;
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => {
                    let hint = known
                        .iter()
                        .map(|cand| (edit_distance(k, cand), cand))
                        .filter(|(d, _)| *d <= 2)
                        .min()
                        .map(|(_, cand)| format!(" (did you mean `{cand}`?)"))
                        .unwrap_or_default();
                    self.err(&field(path, k), format!("unknown field{hint}"));
                }
                None => self.err(
                    path,
                    format!("keys must be strings, found {}", type_name(key)),
                ),
            }
        }
        Some(Fields {
            map,
            path: path.to_string(),
        })
    }

    pub(crate) fn string(&mut self, f: &Fields<'_>, key: &str) -> Option<String> {
        let v = f.get(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.expected(&f.path(key), "a string", other);
                None
            }
        }
    }

    pub(crate) fn string_at(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.expected(path, "a string", other);
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, f: &Fields<'_>, key: &str) -> Option<bool> {
        match f.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.expected(&f.path(key), "true or false", other);
                None
            }
        }
    }

    pub(crate) fn int_at(&mut self, v: &Value, path: &str) -> Option<i64> {
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Some(i),
                None if n.as_u64().is_some() => {
                    self.err(path, "number is too large");
                    None
                }
                None => {
                    self.expected(path, "an integer", v);
                    None
                }
            },
            other => {
                self.expected(path, "an integer", other);
                None
            }
        }
    }

    /// A non-negative or positive integer field that fits `u32`/`u64`.
    pub(crate) fn count(&mut self, f: &Fields<'_>, key: &str, min: i64) -> Option<u64> {
        let path = f.path(key);
        let i = self.int_at(f.get(key)?, &path)?;
        if i < min {
            self.err(&path, format!("must be at least {min}, got {i}"));
            return None;
        }
        u64::try_from(i).ok()
    }

    pub(crate) fn count32(&mut self, f: &Fields<'_>, key: &str, min: i64) -> Option<u32> {
        let path = f.path(key);
        let v = self.count(f, key, min)?;
        match u32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(&path, "number is too large");
                None
            }
        }
    }

    /// A weight in `min..=100`.
    pub(crate) fn weight_at(&mut self, v: &Value, path: &str, min: u8) -> Option<u8> {
        let i = self.int_at(v, path)?;
        if i < i64::from(min) || i > 100 {
            self.err(path, format!("must be between {min} and 100, got {i}"));
            return None;
        }
        u8::try_from(i).ok()
    }

    pub(crate) fn weight(&mut self, f: &Fields<'_>, key: &str, min: u8) -> Option<u8> {
        let path = f.path(key);
        self.weight_at(f.get(key)?, &path, min)
    }

    pub(crate) fn float(&mut self, f: &Fields<'_>, key: &str) -> Option<f64> {
        let v = f.get(key)?;
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.is_finite() => Some(x),
                _ => {
                    self.err(&f.path(key), "must be a finite number");
                    None
                }
            },
            other => {
                self.expected(&f.path(key), "a number", other);
                None
            }
        }
    }

    /// A pause's `duration`: a duration with a unit, or, as in Argo Rollouts, a bare whole
    /// number of seconds (`duration: 30` is 30s).
    fn pause_duration(&mut self, f: &Fields<'_>) -> Option<HumanDuration> {
        match f.get("duration")? {
            Value::Number(n) => match n.as_u64() {
                Some(secs) => Some(HumanDuration::from_secs(secs)),
                None => {
                    self.err(
                        &f.path("duration"),
                        format!(
                            "must be whole seconds (e.g. 30) or a duration such as 30s, got {n}"
                        ),
                    );
                    None
                }
            },
            _ => self.duration(f, "duration"),
        }
    }

    pub(crate) fn duration(&mut self, f: &Fields<'_>, key: &str) -> Option<HumanDuration> {
        let v = f.get(key)?;
        let path = f.path(key);
        match v {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.err(&path, e.to_string());
                    None
                }
            },
            Value::Number(_) => {
                self.err(&path, "expected a duration with a unit, e.g. 30s or 1m");
                None
            }
            other => {
                self.expected(&path, "a duration such as 30s", other);
                None
            }
        }
    }

    pub(crate) fn list<'a>(&mut self, f: &Fields<'a>, key: &str) -> Option<&'a [Value]> {
        match f.get(key)? {
            Value::Sequence(s) => Some(s.as_slice()),
            other => {
                self.expected(&f.path(key), "a list", other);
                None
            }
        }
    }

    fn rollout(&mut self, v: &Value) -> Option<Rollout> {
        if v.is_null() {
            self.err("document", "empty document: expected a Rollout");
            return None;
        }
        let f = self.fields(v, "document", &["apiVersion", "kind", "metadata", "spec"])?;
        let api_version = self.string(&f, "apiVersion");
        if api_version.is_none() && f.get("apiVersion").is_none() {
            self.err("apiVersion", "required");
        }
        let kind = self.string(&f, "kind");
        if kind.is_none() && f.get("kind").is_none() {
            self.err("kind", "required");
        }
        let metadata = match f.get("metadata") {
            Some(m) => self.metadata(m),
            None => {
                self.err("metadata", "required");
                Metadata::default()
            }
        };
        let spec = match f.get("spec") {
            Some(s) => self.spec(s),
            None => {
                self.err("spec", "required");
                RolloutSpec::default()
            }
        };
        Some(Rollout {
            api_version: api_version.unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            metadata,
            spec,
        })
    }

    /// One of `spec.clusters`: its name, ingresses, metric provider and endpoints.
    fn cluster(&mut self, v: &Value, path: &str) -> Option<ClusterSpec> {
        let known = [
            "name",
            "ingresses",
            "metricProvider",
            "primaryEndpoints",
            "canaryEndpoints",
        ];
        let f = self.fields(v, path, &known)?;
        let mut cluster = ClusterSpec {
            name: self.string(&f, "name").unwrap_or_default(),
            primary_endpoints: self.strings(&f, "primaryEndpoints"),
            canary_endpoints: self.strings(&f, "canaryEndpoints"),
            ..ClusterSpec::default()
        };
        if let Some(items) = self.list(&f, "ingresses") {
            for (i, item) in items.iter().enumerate() {
                let p = index(&f.path("ingresses"), i);
                if let Some(g) = self.fields(item, &p, &["name"]) {
                    cluster.ingresses.push(IngressRef {
                        name: self.string(&g, "name").unwrap_or_default(),
                    });
                }
            }
        }
        if let Some(p) = f.get("metricProvider")
            && let Some(g) = self.fields(p, &f.path("metricProvider"), &["type", "address"])
        {
            cluster.metric_provider = Some(MetricProvider {
                kind: self.string(&g, "type").unwrap_or_default(),
                address: self.string(&g, "address"),
            });
        }
        Some(cluster)
    }

    fn metadata(&mut self, v: &Value) -> Metadata {
        let Some(f) = self.fields(v, "metadata", &["name", "namespace"]) else {
            return Metadata::default();
        };
        Metadata {
            name: self.string(&f, "name").unwrap_or_default(),
            namespace: self.string(&f, "namespace"),
        }
    }

    fn spec(&mut self, v: &Value) -> RolloutSpec {
        let known = [
            "ingresses",
            "clusters",
            "clusterPolicy",
            "targetRef",
            "service",
            "provider",
            "autoscalerRef",
            "ingressRef",
            "revertOnDeletion",
            "suspend",
            "primary",
            "canary",
            "progressDeadlineSeconds",
            "skipAnalysis",
            "strategy",
            "analysis",
            "steps",
        ];
        let Some(f) = self.fields(v, "spec", &known) else {
            return RolloutSpec::default();
        };
        let mut spec = RolloutSpec::default();
        if let Some(items) = self.list(&f, "ingresses") {
            for (i, item) in items.iter().enumerate() {
                let p = index("spec.ingresses", i);
                if let Some(g) = self.fields(item, &p, &["name"]) {
                    spec.ingresses.push(IngressRef {
                        name: self.string(&g, "name").unwrap_or_default(),
                    });
                }
            }
        }
        if let Some(items) = self.list(&f, "clusters") {
            for (i, item) in items.iter().enumerate() {
                if let Some(cluster) = self.cluster(item, &index("spec.clusters", i)) {
                    spec.clusters.push(cluster);
                }
            }
        }
        if let Some(s) = self.string(&f, "clusterPolicy") {
            match ClusterPolicy::parse(&s, "spec.clusterPolicy") {
                Ok(policy) => spec.cluster_policy = Some(policy),
                Err(e) => self.err(&e.path, e.message),
            }
        }
        if let Some(t) = f.get("targetRef") {
            spec.target_ref = self.target_ref(t, "spec.targetRef");
        }
        if let Some(s) = f.get("service") {
            let workload = f.get("targetRef").is_some();
            spec.service = self.service(s, "spec.service", workload);
        }
        spec.provider = self.string(&f, "provider");
        if let Some(r) = f.get("autoscalerRef") {
            spec.autoscaler_ref = self.object_ref(r, "spec.autoscalerRef");
        }
        if let Some(r) = f.get("ingressRef") {
            spec.ingress_ref = self.object_ref(r, "spec.ingressRef");
        }
        spec.revert_on_deletion = self.bool(&f, "revertOnDeletion").unwrap_or(false);
        spec.suspend = self.bool(&f, "suspend").unwrap_or(false);
        // In workload mode the controller fills both sides in from the target's Services.
        let workload = f.get("targetRef").is_some();
        if let Some(t) = f.get("primary") {
            spec.primary = self.target(t, "spec.primary");
        } else if !workload {
            self.err("spec.primary", "required");
        }
        if let Some(t) = f.get("canary") {
            spec.canary = self.target(t, "spec.canary");
        } else if !workload {
            self.err("spec.canary", "required");
        }
        spec.progress_deadline_seconds = self.count(&f, "progressDeadlineSeconds", 1);
        spec.skip_analysis = self.bool(&f, "skipAnalysis").unwrap_or(false);
        if let Some(s) = self.string(&f, "strategy") {
            match Strategy::parse(&s) {
                Some(k) => spec.strategy = Some(k),
                None => self.err(
                    "spec.strategy",
                    format!(
                        "unknown strategy {s:?} (expected one of canary, ab, bluegreen, \
                         bluegreen-mirror, steps)"
                    ),
                ),
            }
        }
        if let Some(a) = f.get("analysis") {
            spec.analysis = self.analysis(a, "spec.analysis");
        }
        if let Some(items) = self.list(&f, "steps") {
            let mut steps = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = self.step(item, &index("spec.steps", i)) {
                    steps.push(s);
                }
            }
            spec.steps = Some(steps);
        } else if f.map.get("steps").is_some_and(Value::is_null) {
            spec.steps = Some(Vec::new());
        }
        spec
    }

    pub(crate) fn target_ref(&mut self, v: &Value, path: &str) -> Option<TargetRef> {
        let f = self.fields(v, path, &["apiVersion", "kind", "name"])?;
        let kind = match self.string(&f, "kind") {
            None => {
                self.err(&f.path("kind"), "required");
                WorkloadKind::Deployment
            }
            Some(k) => WorkloadKind::parse(&k).unwrap_or_else(|| {
                self.err(
                    &f.path("kind"),
                    format!("unsupported kind {k:?} (expected Deployment or DaemonSet)"),
                );
                WorkloadKind::Deployment
            }),
        };
        Some(TargetRef {
            api_version: self
                .string(&f, "apiVersion")
                .unwrap_or_else(|| "apps/v1".to_owned()),
            kind,
            name: self.string(&f, "name").unwrap_or_default(),
        })
    }

    pub(crate) fn object_ref(&mut self, v: &Value, path: &str) -> Option<ObjectRef> {
        let f = self.fields(v, path, &["apiVersion", "kind", "name"])?;
        Some(ObjectRef {
            api_version: self.string(&f, "apiVersion"),
            kind: self.string(&f, "kind"),
            name: self.string(&f, "name").unwrap_or_default(),
        })
    }

    pub(crate) fn port(&mut self, f: &Fields<'_>, key: &str) -> Option<u16> {
        let v = f.get(key)?;
        let n = self.int_at(v, &f.path(key))?;
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.err(
                    &f.path(key),
                    format!("must be between 1 and 65535, got {n}"),
                );
                None
            }
        }
    }

    pub(crate) fn strings(&mut self, f: &Fields<'_>, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(items) = self.list(f, key) {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = self.string_at(item, &index(&f.path(key), i)) {
                    out.push(s);
                }
            }
        }
        out
    }

    fn service(&mut self, v: &Value, path: &str, workload: bool) -> Option<ServiceSpec> {
        let known = [
            "name",
            "port",
            "targetPort",
            "portName",
            "hosts",
            "pathPrefix",
            "gateways",
            "gatewayRefs",
        ];
        let f = self.fields(v, path, &known)?;
        let port = self.port(&f, "port");
        // Without a target, the block only selects requests (hosts, pathPrefix): no port.
        if workload && port.is_none() && f.get("port").is_none() {
            self.err(&f.path("port"), "required");
        }
        let mut svc = ServiceSpec {
            name: self.string(&f, "name"),
            port: port.unwrap_or(0),
            target_port: self.port(&f, "targetPort"),
            port_name: self.string(&f, "portName"),
            hosts: self.strings(&f, "hosts"),
            path_prefix: self.string(&f, "pathPrefix"),
            gateways: self.strings(&f, "gateways"),
            gateway_refs: Vec::new(),
        };
        if let Some(items) = self.list(&f, "gatewayRefs") {
            for (i, item) in items.iter().enumerate() {
                let p = index(&f.path("gatewayRefs"), i);
                if let Some(g) = self.fields(item, &p, &["name", "namespace", "sectionName"]) {
                    svc.gateway_refs.push(GatewayRef {
                        name: self.string(&g, "name").unwrap_or_default(),
                        namespace: self.string(&g, "namespace"),
                        section_name: self.string(&g, "sectionName"),
                    });
                }
            }
        }
        Some(svc)
    }

    fn target(&mut self, v: &Value, path: &str) -> Target {
        let Some(f) = self.fields(v, path, &["name", "endpoints", "revision"]) else {
            return Target::default();
        };
        let mut t = Target {
            name: self.string(&f, "name").unwrap_or_default(),
            endpoints: Vec::new(),
            revision: self.string(&f, "revision"),
        };
        if let Some(items) = self.list(&f, "endpoints") {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = self.string_at(item, &index(&f.path("endpoints"), i)) {
                    t.endpoints.push(s);
                }
            }
        }
        t
    }

    fn analysis(&mut self, v: &Value, path: &str) -> Analysis {
        let known = [
            "interval",
            "threshold",
            "maxWeight",
            "stepWeight",
            "stepWeights",
            "stepWeightPromotion",
            "iterations",
            "match",
            "mirror",
            "mirrorWeight",
            "sessionAffinity",
            "earlyPromotion",
            "onInconclusive",
            "inconclusiveHold",
            "metrics",
            "webhooks",
            "alerts",
        ];
        let Some(f) = self.fields(v, path, &known) else {
            return Analysis::default();
        };
        let mut a = Analysis {
            interval: self.duration(&f, "interval"),
            threshold: self.count32(&f, "threshold", 1),
            max_weight: self.weight(&f, "maxWeight", 1),
            step_weight: self.weight(&f, "stepWeight", 1),
            // 0 is Flagger's "unset" for these two: a warning says so ([`RolloutSpec::warnings`]).
            step_weight_promotion: self.weight(&f, "stepWeightPromotion", 0),
            iterations: self.count32(&f, "iterations", 1),
            mirror: self.bool(&f, "mirror").unwrap_or(false),
            mirror_weight: self.weight(&f, "mirrorWeight", 0),
            early_promotion: self.bool(&f, "earlyPromotion").unwrap_or(false),
            inconclusive_hold: self.duration(&f, "inconclusiveHold"),
            ..Analysis::default()
        };
        if let Some(s) = self.string(&f, "onInconclusive") {
            match s.as_str() {
                "rollback" => a.on_inconclusive = Some(OnInconclusive::Rollback),
                "promote" => a.on_inconclusive = Some(OnInconclusive::Promote),
                _ => self.err(
                    &f.path("onInconclusive"),
                    format!("unknown value {s:?} (expected rollback or promote)"),
                ),
            }
        }
        if let Some(items) = self.list(&f, "stepWeights") {
            let mut ws = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(w) = self.weight_at(item, &index(&f.path("stepWeights"), i), 1) {
                    ws.push(w);
                }
            }
            a.step_weights = Some(ws);
        }
        if let Some(items) = self.list(&f, "match") {
            a.matches = self.matches(items, &f.path("match"));
        }
        if let Some(s) = f.get("sessionAffinity") {
            let sp = f.path("sessionAffinity");
            if let Some(g) = self.fields(s, &sp, &["cookieName", "maxAge", "primaryCookieName"]) {
                let cookie_name = self.string(&g, "cookieName");
                if cookie_name.is_none() && g.get("cookieName").is_none() {
                    self.err(&g.path("cookieName"), "required");
                }
                a.session_affinity = Some(SessionAffinity {
                    cookie_name: cookie_name.unwrap_or_default(),
                    max_age: self.count(&g, "maxAge", 1),
                    primary_cookie_name: self.string(&g, "primaryCookieName"),
                });
            }
        }
        if let Some(items) = self.list(&f, "metrics") {
            a.metrics = self.metrics(items, &f.path("metrics"));
        }
        if let Some(items) = self.list(&f, "webhooks") {
            for (i, item) in items.iter().enumerate() {
                if let Some(w) = self.webhook(item, &index(&f.path("webhooks"), i)) {
                    a.webhooks.push(w);
                }
            }
        }
        if let Some(items) = self.list(&f, "alerts") {
            for (i, item) in items.iter().enumerate() {
                if let Some(al) = self.alert(item, &index(&f.path("alerts"), i)) {
                    a.alerts.push(al);
                }
            }
        }
        a
    }

    fn matches(&mut self, items: &[Value], path: &str) -> Vec<MatchRule> {
        let mut rules = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rp = index(path, i);
            let Some(f) = self.fields(item, &rp, &["headers", "cookies", "cookie"]) else {
                continue;
            };
            let mut rule = MatchRule::default();
            if let Some(h) = f.get("headers") {
                rule.headers = self.conditions(h, &f.path("headers"));
            }
            for key in ["cookies", "cookie"] {
                if let Some(c) = f.get(key) {
                    rule.cookies.extend(self.conditions(c, &f.path(key)));
                }
            }
            rules.push(rule);
        }
        rules
    }

    pub(crate) fn conditions(&mut self, v: &Value, path: &str) -> BTreeMap<String, StringMatch> {
        let mut out = BTreeMap::new();
        let Value::Mapping(map) = v else {
            self.expected(path, "a mapping of names to conditions", v);
            return out;
        };
        for (k, cond) in map {
            let Some(name) = k.as_str() else {
                self.err(
                    path,
                    format!("names must be strings, found {}", type_name(k)),
                );
                continue;
            };
            let cp = field(path, name);
            let Some(f) = self.fields(cond, &cp, &["exact", "prefix", "suffix", "regex"]) else {
                continue;
            };
            let mut found = Vec::new();
            for op in ["exact", "prefix", "suffix", "regex"] {
                if let Some(s) = self.string(&f, op) {
                    found.push(match op {
                        "exact" => StringMatch::Exact(s),
                        "prefix" => StringMatch::Prefix(s),
                        "suffix" => StringMatch::Suffix(s),
                        _ => StringMatch::Regex(s),
                    });
                }
            }
            let present = f.map.len();
            if present == 0 {
                self.err(&cp, "needs one of exact, prefix, suffix or regex");
            } else if present > 1 {
                self.err(&cp, "give only one of exact, prefix, suffix or regex");
            } else if let Some(m) = found.pop() {
                out.insert(name.to_string(), m);
            }
        }
        out
    }

    fn metrics(&mut self, items: &[Value], path: &str) -> Vec<Metric> {
        let known = [
            "name",
            "thresholdRange",
            "interval",
            "query",
            "provider",
            "maxDelta",
            "maxRatio",
            "onNoData",
            "minRequests",
            "judge",
        ];
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let mp = index(path, i);
            let Some(f) = self.fields(item, &mp, &known) else {
                continue;
            };
            let mut m = Metric {
                name: self.string(&f, "name").unwrap_or_default(),
                interval: self.duration(&f, "interval"),
                query: self.string(&f, "query"),
                max_delta: self.float(&f, "maxDelta"),
                max_ratio: self.float(&f, "maxRatio"),
                min_requests: self.count(&f, "minRequests", 0),
                ..Metric::default()
            };
            if let Some(r) = f.get("thresholdRange")
                && let Some(g) = self.fields(r, &f.path("thresholdRange"), &["min", "max"])
            {
                m.threshold_range = Some(ThresholdRange {
                    min: self.float(&g, "min"),
                    max: self.float(&g, "max"),
                });
            }
            if let Some(p) = f.get("provider")
                && let Some(g) = self.fields(p, &f.path("provider"), &["type", "address"])
            {
                m.provider = Some(MetricProvider {
                    kind: self.string(&g, "type").unwrap_or_default(),
                    address: self.string(&g, "address"),
                });
            }
            if let Some(s) = self.string(&f, "onNoData") {
                match s.as_str() {
                    "inconclusive" => m.on_no_data = OnNoData::Inconclusive,
                    "fail" => m.on_no_data = OnNoData::Fail,
                    "pass" => m.on_no_data = OnNoData::Pass,
                    _ => self.err(
                        &f.path("onNoData"),
                        format!("unknown value {s:?} (expected inconclusive, fail or pass)"),
                    ),
                }
            }
            if let Some(s) = self.string(&f, "judge") {
                match s.as_str() {
                    "threshold" => m.judge = Judge::Threshold,
                    "sequential" => m.judge = Judge::Sequential,
                    _ => self.err(
                        &f.path("judge"),
                        format!("unknown judge {s:?} (expected threshold or sequential)"),
                    ),
                }
            }
            out.push(m);
        }
        out
    }

    fn webhook(&mut self, v: &Value, path: &str) -> Option<Webhook> {
        let known = ["name", "type", "url", "timeout", "retries", "metadata"];
        let f = self.fields(v, path, &known)?;
        let mut w = Webhook {
            name: self.string(&f, "name").unwrap_or_default(),
            url: self.string(&f, "url").unwrap_or_default(),
            timeout: self.duration(&f, "timeout"),
            retries: self.count32(&f, "retries", 0),
            ..Webhook::default()
        };
        if let Some(t) = self.string(&f, "type") {
            match WebhookType::parse(&t) {
                Some(k) => w.kind = k,
                None => {
                    let all: Vec<&str> = WebhookType::ALL.iter().map(|t| t.as_str()).collect();
                    self.err(
                        &f.path("type"),
                        format!(
                            "unknown webhook type {t:?} (expected one of {})",
                            all.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(m) = f.get("metadata") {
            let mp = f.path("metadata");
            match m {
                Value::Mapping(map) => {
                    for (k, val) in map {
                        let Some(k) = k.as_str() else {
                            self.err(&mp, "keys must be strings");
                            continue;
                        };
                        let s = match val {
                            Value::String(s) => Some(s.clone()),
                            Value::Number(n) => Some(n.to_string()),
                            Value::Bool(b) => Some(b.to_string()),
                            other => {
                                self.expected(&field(&mp, k), "a string", other);
                                None
                            }
                        };
                        if let Some(s) = s {
                            w.metadata.insert(k.to_string(), s);
                        }
                    }
                }
                other => self.expected(&mp, "a mapping of strings", other),
            }
        }
        Some(w)
    }

    fn alert(&mut self, v: &Value, path: &str) -> Option<Alert> {
        let f = self.fields(v, path, &["name", "severity", "providerRef"])?;
        let mut a = Alert {
            name: self.string(&f, "name").unwrap_or_default(),
            ..Alert::default()
        };
        if let Some(s) = self.string(&f, "severity") {
            match s.as_str() {
                "info" => a.severity = Severity::Info,
                "warn" => a.severity = Severity::Warn,
                "error" => a.severity = Severity::Error,
                _ => self.err(
                    &f.path("severity"),
                    format!("unknown severity {s:?} (expected info, warn or error)"),
                ),
            }
        }
        match f.get("providerRef") {
            Some(p) => {
                if let Some(g) = self.fields(p, &f.path("providerRef"), &["name"]) {
                    a.provider_ref = ProviderRef {
                        name: self.string(&g, "name").unwrap_or_default(),
                    };
                }
            }
            None => self.err(&f.path("providerRef"), "required"),
        }
        Some(a)
    }

    fn check_step(&mut self, v: &Value, path: &str) -> Option<CheckStep> {
        let known = ["name", "url", "timeout", "retries", "onFailure"];
        let f = self.fields(v, path, &known)?;
        let on_failure = match f.get("onFailure") {
            Some(body) => {
                let fp = f.path("onFailure");
                let g = self.fields(body, &fp, &["goTo", "setWeight", "maxReturns"])?;
                let go_to = self.string(&g, "goTo");
                let set_weight = self.weight(&g, "setWeight", 0);
                for (key, missing) in [
                    ("goTo", go_to.is_none()),
                    ("setWeight", set_weight.is_none()),
                ] {
                    if missing && g.get(key).is_none() {
                        self.err(&g.path(key), "required");
                    }
                }
                Some(CheckFailure {
                    go_to: go_to.unwrap_or_default(),
                    set_weight: set_weight.unwrap_or(0),
                    max_returns: self.count32(&g, "maxReturns", 1),
                })
            }
            None => None,
        };
        Some(CheckStep {
            name: self.string(&f, "name").unwrap_or_default(),
            url: self.string(&f, "url").unwrap_or_default(),
            timeout: self.duration(&f, "timeout"),
            retries: self.count32(&f, "retries", 0),
            on_failure,
        })
    }

    fn step(&mut self, v: &Value, path: &str) -> Option<Step> {
        let kinds = [
            "setWeight",
            "pause",
            "analysis",
            "approval",
            "setHeaderRoute",
            "setMirror",
            "stage",
            "check",
        ];
        let f = self.fields(v, path, &kinds)?;
        let present: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| f.map.contains_key(*k))
            .collect();
        let kind = match present.as_slice() {
            [one] => *one,
            [] => {
                self.err(path, format!("a step needs one of {}", kinds.join(", ")));
                return None;
            }
            _ => {
                self.err(
                    path,
                    format!("a step has exactly one kind, found {}", present.join(", ")),
                );
                return None;
            }
        };
        let sp = f.path(kind);
        let empty = Value::Mapping(Mapping::new());
        let body = f.get(kind).unwrap_or(&empty);
        match kind {
            "setWeight" => self.weight_at(body, &sp, 0).map(Step::SetWeight),
            "pause" => {
                let g = self.fields(body, &sp, &["duration"])?;
                Some(Step::Pause(PauseStep {
                    duration: self.pause_duration(&g),
                }))
            }
            "analysis" => {
                let g = self.fields(body, &sp, &["metrics"])?;
                let metrics = self
                    .list(&g, "metrics")
                    .map(|items| self.metrics(items, &g.path("metrics")));
                Some(Step::Analysis(AnalysisStep { metrics }))
            }
            "approval" => {
                self.fields(body, &sp, &[])?;
                Some(Step::Approval(ApprovalStep {}))
            }
            "setHeaderRoute" => {
                let g = self.fields(body, &sp, &["match"])?;
                let matches = match self.list(&g, "match") {
                    Some(items) => self.matches(items, &g.path("match")),
                    None => Vec::new(),
                };
                Some(Step::SetHeaderRoute(HeaderRouteStep { matches }))
            }
            "stage" => self.string_at(body, &sp).map(Step::Stage),
            "check" => self.check_step(body, &sp).map(Step::Check),
            _ => {
                let g = self.fields(body, &sp, &["weight"])?;
                let weight = match g.get("weight") {
                    Some(w) => self.weight_at(w, &g.path("weight"), 0)?,
                    None => {
                        self.err(&g.path("weight"), "required");
                        return None;
                    }
                };
                Some(Step::SetMirror(MirrorStep { weight }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        match parse_rollout(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const VALID: &str = r#"
apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata:
  name: podinfo
  namespace: test
spec:
  ingresses:
    - name: edge
  primary: { name: podinfo-v1, endpoints: ["127.0.0.1:9001"] }
  canary:  { name: podinfo-v2, endpoints: ["127.0.0.1:9002"] }
  progressDeadlineSeconds: 600
  skipAnalysis: false
  analysis:
    interval: 1m
    threshold: 10
    maxWeight: 50
    stepWeight: 2
    stepWeightPromotion: 100
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        interval: 1m
      - name: request-duration
        thresholdRange: { max: 500 }
    webhooks:
      - name: approval
        type: confirm-rollout
        url: http://127.0.0.1:8090/gate/check
        timeout: 10s
    alerts:
      - name: on-call
        severity: error
        providerRef: { name: slack }
"#;

    #[test]
    fn design_example_parses() {
        let r = parse_rollout(VALID).expect("valid");
        assert_eq!(r.metadata.name, "podinfo");
        assert_eq!(r.spec.analysis.step_weight, Some(2));
        assert_eq!(r.spec.analysis.interval(), HumanDuration::from_secs(60));
        assert_eq!(
            r.spec.analysis.webhooks[0].kind,
            WebhookType::ConfirmRollout
        );
        // The JSON form decodes back to the same value.
        let json = serde_json::to_string(&r).expect("serialize");
        let back: Rollout = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
    }

    /// Found by fuzzing: `127+0.0.1:9001` validated, and the router agent refused the route.
    /// An endpoint the spec accepts is one the agent accepts (`route::parse_endpoint`).
    #[test]
    fn refuses_an_endpoint_the_router_agent_would_refuse() {
        for endpoint in [
            "127+0.0.1:9001",
            "[[::1]]:9001",
            "[::1:9001",
            "pod info:9001",
        ] {
            let yaml = VALID.replace("\"127.0.0.1:9001\"", &format!("{endpoint:?}"));
            let want = format!("spec.primary.endpoints[0]: {endpoint:?} has an invalid host");
            assert_eq!(errors(&yaml), vec![want], "{endpoint}");
        }
        for endpoint in [
            "[::1]:9001",
            "::1:9001",
            "podinfo-v1.test.svc:9001",
            "10.0.0.7:80",
        ] {
            let yaml = VALID.replace("\"127.0.0.1:9001\"", &format!("{endpoint:?}"));
            assert_eq!(errors(&yaml), Vec::<String>::new(), "{endpoint}");
        }
    }

    #[test]
    fn reports_every_problem_with_paths() {
        let yaml = VALID
            .replace(
                "stepWeight: 2",
                "stepWieght: 2\n    stepWeights: [10, 5, 200]",
            )
            .replace("threshold: 10", "threshold: 0")
            .replace("interval: 1m\n    threshold", "interval: 0s\n    threshold")
            .replace("name: podinfo\n", "name: Podinfo_1\n");
        let errs = errors(&yaml);
        let want = [
            "spec.analysis.stepWieght: unknown field",
            "spec.analysis.interval: duration must be greater than zero",
            "spec.analysis.threshold: must be at least 1, got 0",
            "spec.analysis.stepWeights[2]: must be between 1 and 100, got 200",
            "spec.analysis.stepWeights[1]: weights must increase",
            "metadata.name: \"Podinfo_1\" is not a DNS-1123 label",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
    }

    /// Decodes `yaml`, which must be valid; its warnings as `path: message` and its plan.
    fn with_warnings(yaml: &str) -> (Rollout, Vec<String>, crate::plan::Plan) {
        let (r, ws) = parse_rollout_with_warnings(yaml).expect("valid, with warnings");
        let plan = crate::plan::Plan::build(&r.spec).expect("plan");
        (r, ws.iter().map(ToString::to_string).collect(), plan)
    }

    #[test]
    fn step_weight_beside_step_weights_sets_the_steps_as_flagger() {
        // Flagger's nextStepWeight uses stepWeight when it is set; maxWeight() is then the last
        // of stepWeights (and maxWeight is ignored).
        let yaml = VALID.replace(
            "stepWeight: 2",
            "stepWeight: 20\n    stepWeights: [1, 2, 10, 70]",
        );
        let (_, ws, plan) = with_warnings(&yaml);
        assert_eq!(plan.weights(), vec![20, 40, 60, 80]);
        assert_eq!(
            ws,
            vec![
                "spec.analysis.stepWeights: only its last weight (70) is used, as the maximum \
                 weight: stepWeight is set and sets the steps (as Flagger)",
                "spec.analysis.maxWeight: ignored, stepWeights is set: its last weight (70) is \
                 the maximum weight (as Flagger)",
            ]
        );
        assert_eq!(parse_rollout(&yaml).map(|_| ()), Ok(()));
    }

    #[test]
    fn max_weight_beside_step_weights_is_ignored_as_flagger() {
        let yaml = VALID.replace(
            "maxWeight: 50\n    stepWeight: 2",
            "maxWeight: 5\n    stepWeights: [1, 2, 10, 80]",
        );
        let (_, ws, plan) = with_warnings(&yaml);
        assert_eq!(plan.weights(), vec![1, 2, 10, 80]);
        assert_eq!(ws.len(), 1, "{ws:?}");
        assert!(ws[0].starts_with("spec.analysis.maxWeight: ignored, stepWeights is set"));
    }

    #[test]
    fn weights_beside_iterations_are_ignored_as_flagger() {
        let bg = VALID.replace("stepWeight: 2", "stepWeight: 2\n    iterations: 3");
        let (_, ws, plan) = with_warnings(&bg);
        assert_eq!(plan.strategy, Strategy::BlueGreen);
        assert_eq!(plan.weights(), vec![0, 0, 0]);
        assert_eq!(
            ws,
            vec![
                "spec.analysis.stepWeight: ignored, iterations is set: blue/green shifts no \
                 weights (as Flagger)",
                "spec.analysis.maxWeight: ignored, iterations is set: blue/green shifts no \
                 weights (as Flagger)",
            ]
        );
        let ab = VALID.replace(
            "maxWeight: 50\n    stepWeight: 2",
            "stepWeights: [10, 20]\n    iterations: 2\n    match: [{headers: {x-canary: {exact: \"1\"}}}]",
        );
        let (_, ws, plan) = with_warnings(&ab);
        assert_eq!(plan.strategy, Strategy::AbTesting);
        assert_eq!(plan.weights(), vec![0, 0]);
        assert_eq!(
            ws,
            vec![
                "spec.analysis.stepWeights: ignored, iterations is set: A/B testing shifts no \
                 weights (as Flagger)"
            ]
        );
        // An explicit strategy that contradicts iterations is still an error.
        let explicit = bg.replace("  analysis:", "  strategy: canary\n  analysis:");
        assert!(
            errors(&explicit)
                .iter()
                .any(|e| e.starts_with("spec.strategy:"))
        );
    }

    #[test]
    fn step_weight_promotion_zero_is_unset_as_flagger() {
        let yaml = VALID.replace("stepWeightPromotion: 100", "stepWeightPromotion: 0");
        let (r, ws, plan) = with_warnings(&yaml);
        assert_eq!(r.spec.analysis.step_weight_promotion(), 100);
        assert_eq!(plan.promotion.weights, vec![100]);
        assert_eq!(
            ws,
            vec![
                "spec.analysis.stepWeightPromotion: 0 means unset: promotion moves all traffic \
                 at once (as Flagger)"
            ]
        );
        let bad = VALID.replace("stepWeightPromotion: 100", "stepWeightPromotion: 101");
        assert!(
            errors(&bad)
                .iter()
                .any(|e| e.starts_with("spec.analysis.stepWeightPromotion: must be between"))
        );
    }

    #[test]
    fn mirror_weight_zero_is_unset_as_flagger() {
        let yaml = VALID.replace(
            "stepWeight: 2",
            "stepWeight: 25\n    mirror: true\n    mirrorWeight: 0",
        );
        let (_, ws, plan) = with_warnings(&yaml);
        let first = plan.step(0).expect("mirror step");
        assert!(first.mirror);
        assert_eq!(first.mirror_weight, Some(100));
        assert_eq!(plan.weights(), vec![0, 25, 50]);
        assert_eq!(
            ws,
            vec![
                "spec.analysis.mirrorWeight: 0 means unset: every request is mirrored (as Flagger)"
            ]
        );
        let bad = VALID.replace(
            "stepWeight: 2",
            "stepWeight: 2\n    mirror: true\n    mirrorWeight: -1",
        );
        assert!(
            errors(&bad)
                .iter()
                .any(|e| e.starts_with("spec.analysis.mirrorWeight:")),
            "{:?}",
            errors(&bad)
        );
    }

    #[test]
    fn campaign_steps_decode_and_their_returns_are_checked() {
        let base = VALID.replace("    maxWeight: 50\n    stepWeight: 2\n", "");
        let steps = "  steps:\n    - stage: one\n    - setWeight: 10\n    - stage: two\n    - setWeight: 40\n    - check: {name: e2e, url: http://tests/e2e, timeout: 2m, onFailure: {goTo: one, setWeight: 5, maxReturns: 2}}\n";
        let (r, ws, _) = with_warnings(&(base.clone() + steps));
        assert!(ws.is_empty(), "{ws:?}");
        let got = r.spec.steps.expect("steps");
        assert_eq!(got[0], Step::Stage("one".into()));
        let Step::Check(c) = &got[4] else {
            panic!("{:?}", got[4])
        };
        assert_eq!(c.name, "e2e");
        assert_eq!(c.timeout, Some(HumanDuration::from_secs(120)));
        let back = c.on_failure.as_ref().expect("onFailure");
        assert_eq!(
            (back.go_to.as_str(), back.set_weight, back.max_returns()),
            ("one", 5, 2)
        );

        let cases = [
            // A stage after the check, or none of that name.
            (
                "goTo: one",
                "goTo: three",
                "spec.steps[4].check.onFailure.goTo",
            ),
            // Not lower than the 40 % the check runs at.
            (
                "setWeight: 5",
                "setWeight: 40",
                "spec.steps[4].check.onFailure.setWeight",
            ),
            (
                "maxReturns: 2",
                "maxReturns: 11",
                "spec.steps[4].check.onFailure.maxReturns",
            ),
            (
                "timeout: 2m",
                "timeout: 2m, typo: 1",
                "spec.steps[4].check.typo",
            ),
            (
                "url: http://tests/e2e",
                "url: tests",
                "spec.steps[4].check.url",
            ),
            ("- stage: two", "- stage: one", "spec.steps[2].stage"),
        ];
        for (from, to, path) in cases {
            let bad = base.clone() + &steps.replace(from, to);
            let errs = errors(&bad);
            assert!(errs.iter().any(|e| e.starts_with(path)), "{to}: {errs:?}");
        }
        // A goTo must look back: a stage after the check is refused too.
        let later = base
            + "  steps:\n    - setWeight: 40\n    - check: {name: c, url: http://t/c, onFailure: {goTo: later, setWeight: 5}}\n    - stage: later\n";
        assert!(
            errors(&later)
                .iter()
                .any(|e| e.starts_with("spec.steps[1].check.onFailure.goTo")),
            "{:?}",
            errors(&later)
        );
    }

    #[test]
    fn pause_duration_may_be_bare_seconds_as_argo() {
        let base = VALID.replace("    maxWeight: 50\n    stepWeight: 2\n", "");
        let yaml = base.clone() + "  steps:\n    - setWeight: 5\n    - pause: {duration: 30}\n";
        let (r, ws, plan) = with_warnings(&yaml);
        assert!(ws.is_empty(), "{ws:?}");
        let steps = r.spec.steps.expect("steps");
        assert_eq!(
            steps[1],
            Step::Pause(PauseStep {
                duration: Some(HumanDuration::from_secs(30))
            })
        );
        assert_eq!(
            plan.step(1).expect("pause").hold,
            Some(crate::plan::Hold::Pause {
                duration: Some(HumanDuration::from_secs(30))
            })
        );
        for (bad, want) in [
            ("-5", "spec.steps[1].pause.duration: must be whole seconds"),
            ("1.5", "spec.steps[1].pause.duration: must be whole seconds"),
            (
                "0",
                "spec.steps[1].pause.duration: duration must be greater than zero",
            ),
        ] {
            let yaml = base.clone()
                + &format!("  steps:\n    - setWeight: 5\n    - pause: {{duration: {bad}}}\n");
            let errs = errors(&yaml);
            assert!(errs.iter().any(|e| e.starts_with(want)), "{bad}: {errs:?}");
        }
        // Everywhere else a duration still needs its unit.
        let unitless = VALID.replace("interval: 1m\n    threshold", "interval: 60\n    threshold");
        assert!(
            errors(&unitless)
                .iter()
                .any(|e| e.starts_with("spec.analysis.interval: expected a duration with a unit"))
        );
    }

    #[test]
    fn clusters_decode_and_round_trip() {
        let yaml = VALID.replace(
            "  ingresses:\n    - name: edge\n",
            "  clusters:\n    - name: eu\n      ingresses: [{name: edge}]\n      \
             metricProvider: {type: prometheus, address: \"http://127.0.0.1:9090\"}\n    \
             - name: us\n      ingresses: [{name: edge}, {name: lb}]\n      \
             canaryEndpoints: [\"127.0.0.2:9002\"]\n  clusterPolicy: waves\n",
        );
        let rollout = parse_rollout(&yaml).unwrap();
        let spec = &rollout.spec;
        assert!(spec.ingresses.is_empty());
        assert_eq!(spec.cluster_policy, Some(ClusterPolicy::Waves));
        let names: Vec<_> = spec.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        assert_eq!(
            spec.clusters[1].ingress_names().collect::<Vec<_>>(),
            ["edge", "lb"]
        );
        let provider = spec.clusters[0].metric_provider.as_ref().unwrap();
        assert_eq!(provider.address.as_deref(), Some("http://127.0.0.1:9090"));
        assert_eq!(spec.clusters[1].canary_endpoints, ["127.0.0.2:9002"]);
        assert!(spec.clusters[1].primary_endpoints.is_empty());
        // What the API stores and returns reads back the same.
        let again = parse_rollout(&serde_yaml::to_string(&rollout).unwrap()).unwrap();
        assert_eq!(again, rollout);
    }

    #[test]
    fn cluster_errors_name_the_field() {
        let with = |clusters: &str| {
            errors(&VALID.replace(
                "  ingresses:\n    - name: edge\n",
                &format!("  ingresses:\n    - name: edge\n{clusters}"),
            ))
        };
        let errs = with(
            "  clusters:\n    - name: eu\n      ingresses: [{name: Edge}]\n      \
             metricProvider: {address: ftp://x}\n      primaryEndpoints: [nowhere]\n    \
             - {name: e.u, ingresses: [], zone: a}\n  \
             clusterPolicy: everywhere\n",
        );
        for want in [
            "spec.ingresses: give the ingresses in each of spec.clusters",
            "spec.clusters[0].ingresses[0].name: \"Edge\" is not a DNS-1123 label",
            "spec.clusters[0].metricProvider.type: required",
            "spec.clusters[0].metricProvider.address: \"ftp://x\" must be",
            "spec.clusters[0].primaryEndpoints[0]: ",
            "spec.clusters[1].zone: unknown field",
            "spec.clusters[1].name: only ASCII letters",
            "spec.clusters[1].ingresses: a cluster needs at least one ingress",
            "spec.clusterPolicy: unknown cluster policy \"everywhere\"; expected all or waves",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
        // A policy without clusters says nothing: refused, not ignored.
        let errs = errors(&VALID.replace(
            "  ingresses:\n    - name: edge\n",
            "  ingresses:\n    - name: edge\n  clusterPolicy: waves\n",
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.clusterPolicy: says how spec.clusters move")),
            "{errs:?}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line() {
        let errs = errors("apiVersion: x\nkind: [\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("yaml: line "), "{errs:?}");
    }

    #[test]
    fn missing_required_fields() {
        let errs =
            errors("apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata: {}\nspec: {}\n");
        for w in [
            "metadata.name: required",
            "spec.ingresses: at least one ingress is required",
            "spec.primary: required",
            "spec.canary: required",
        ] {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
    }

    #[test]
    fn match_rules() {
        let yaml = VALID.replace(
            "stepWeight: 2",
            "match:\n      - headers: {x-canary: {regex: \"(unclosed\"}, X-Up: {exact: a}}\n      - cookie: {canary: {exact: always}}",
        );
        let errs = errors(&yaml);
        for w in [
            "spec.analysis.match: requires iterations",
            "spec.analysis.match[0].headers.x-canary.regex: invalid regex",
            "spec.analysis.match[0].headers.X-Up: header names must be lower-case",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn steps_parse() {
        let yaml = VALID.replace("    maxWeight: 50\n    stepWeight: 2\n", "")
            + "  steps:\n    - setWeight: 5\n    - pause: {duration: 5m}\n    - analysis: {}\n    - approval: {}\n    - setHeaderRoute: {match: [{headers: {x-canary: {exact: \"1\"}}}]}\n    - setMirror: {weight: 20}\n    - pause: {}\n    - pause:\n";
        let r = parse_rollout(&yaml).expect("valid steps");
        let steps = r.spec.steps.expect("steps");
        assert_eq!(steps.len(), 8);
        assert_eq!(steps[0], Step::SetWeight(5));
        assert_eq!(steps[7], Step::Pause(PauseStep { duration: None }));
    }

    #[test]
    fn strange_documents_do_not_panic() {
        for doc in [
            "",
            "~",
            "[]",
            "3",
            "a: b",
            "---\n---\n",
            "spec: [1]",
            "!tag 3",
            "{? [a]: b}",
        ] {
            assert!(parse_rollout(doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn covers_paths() {
        assert!(covers("spec.a", "spec.a"));
        assert!(covers("spec.a", "spec.a.b"));
        assert!(covers("spec.a", "spec.a[0]"));
        assert!(!covers("spec.a", "spec.ab"));
    }

    use proptest::prelude::{Just, any, prop_assert, prop_oneof, proptest};
    use proptest::strategy::Strategy as PropStrategy;

    const KEYS: &[&str] = &[
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "spec",
        "ingresses",
        "primary",
        "canary",
        "endpoints",
        "analysis",
        "interval",
        "threshold",
        "maxWeight",
        "stepWeight",
        "stepWeights",
        "iterations",
        "match",
        "headers",
        "cookies",
        "cookie",
        "exact",
        "regex",
        "mirror",
        "mirrorWeight",
        "sessionAffinity",
        "cookieName",
        "maxAge",
        "metrics",
        "thresholdRange",
        "min",
        "max",
        "webhooks",
        "type",
        "url",
        "timeout",
        "alerts",
        "providerRef",
        "steps",
        "setWeight",
        "pause",
        "duration",
        "approval",
        "setMirror",
        "weight",
        "setHeaderRoute",
        "strategy",
        "skipAnalysis",
        "onNoData",
        "judge",
        "onInconclusive",
        "inconclusiveHold",
    ];

    fn yaml_value() -> impl PropStrategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            any::<f64>().prop_map(|f| Value::Number(f.into())),
            "[a-z0-9:./ ()*+?-]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("1m"),
                Just("0s"),
                Just("-5s"),
                Just("aviary.dev/v1alpha1"),
                Just("Rollout")
            ]
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                    |kvs| {
                        let mut m = Mapping::new();
                        for (k, v) in kvs {
                            m.insert(Value::String(k.to_string()), v);
                        }
                        Value::Mapping(m)
                    }
                ),
            ]
        })
    }

    proptest! {
        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse_rollout(&s);
        }

        /// Splicing junk into a valid document never panics, and an error always has a path.
        #[test]
        fn mutated_documents_never_panic(at in 0usize..2000, junk in "[a-zA-Z0-9:{}\\[\\],\"' \n-]{0,24}") {
            let at = at.min(VALID.len());
            let at = (0..=at).rev().find(|i| VALID.is_char_boundary(*i)).unwrap_or(0);
            let doc = format!("{}{}{}", &VALID[..at], junk, &VALID[at..]);
            if let Err(e) = parse_rollout(&doc) {
                prop_assert!(!e.0.is_empty());
                prop_assert!(e.0.iter().all(|f| !f.path.is_empty() && !f.message.is_empty()));
            }
        }

        /// Arbitrary YAML trees built from real field names never panic the decoder.
        #[test]
        fn arbitrary_yaml_trees_never_panic(v in yaml_value()) {
            if let Ok(text) = serde_yaml::to_string(&v) {
                let _ = parse_rollout(&text);
            }
        }
    }
}
