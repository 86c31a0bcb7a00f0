//! Flagger's resources as an input format (DESIGN.md §8): a `flagger.app/v1beta1` `Canary`
//! decodes into the same [`Rollout`] a user would have written, with its `MetricTemplate`s
//! resolved and its `AlertProvider`s checked.
//!
//! Flow: text → YAML documents (`---`) → by `apiVersion`/`kind`: an Aviary `Rollout`
//! ([`mod@crate::decode`]), a `MetricTemplate`, an `AlertProvider` → then each `Canary`, whose
//! `templateRef`s resolve against the templates of the same input (or a [`TemplateSource`]) →
//! [`Rollout::validate`] → [`Decoded`].
//!
//! Every field of Flagger's schemas is in [`CANARY_FIELDS`], [`METRIC_TEMPLATE_FIELDS`] or
//! [`ALERT_PROVIDER_FIELDS`]: mapped, or accepted with a [`Warning`] naming its path when it has
//! no effect in Aviary. A field in none of them is an error, as in an Aviary `Rollout`.
//!
//! Mapping rules:
//! - The converted rollout drives one ingress, [`ingress_name`]: `<router>-<namespace>-<name>`,
//!   where the router is the provider as Aviary's router agent spells it (`gatewayapi:v1` →
//!   `gateway-api`, `linkerd` and `smi:*` → `smi`, `nginx` → `nginx-ingress`, no provider →
//!   `mesh`). A router agent serves the Canary's route under that name.
//! - A metric's `templateRef` (namespace defaulting to the Canary's) takes the template's
//!   provider and query. The query's static variables are filled in at decode time:
//!   `{{ name }}` (the Canary), `{{ namespace }}`, `{{ target }}` (`targetRef.name`),
//!   `{{ service }}` (`service.name`, else the target), `{{ ingress }}` (`ingressRef.name`,
//!   else the target), `{{ route }}` (`routeRef.name`, else the target) and
//!   `{{ variables.X }}` (the metric's `templateVariables`). `{{ interval }}` stays: the
//!   analyzer fills it with each window's length. Any other placeholder is an error.
//! - A metric without a template uses `spec.metricsServer` (Prometheus) when given.
//! - A metric's deprecated `threshold` is the lower bound of `request-success-rate` and the
//!   upper bound of every other metric, as in Flagger.
//!
//! Paths: problems in the first document have plain paths (`spec.analysis.interval`), those in
//! later documents are prefixed with the document's index: `documents[2].spec.analysis.interval`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use crate::decode::{self, Decoder, Fields};
use crate::error::{FieldError, ValidationErrors, field, index};
use crate::spec::{
    self, Alert, Analysis, GatewayRef, IngressRef, MatchRule, Metadata, Metric, MetricProvider,
    ObjectRef, ProviderRef, Rollout, RolloutSpec, ServiceSpec, SessionAffinity, Severity,
    ThresholdRange, Webhook, WebhookType,
};

/// The Flagger API version Aviary reads.
pub const API_VERSION: &str = "flagger.app/v1beta1";

/// How a field of a Flagger schema is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldUse {
    /// Decoded into Aviary's types.
    Mapped,
    /// Decoded and kept in the result, but nothing in Aviary acts on it: a warning says why.
    Kept(&'static str),
    /// Accepted and not read: a warning says why it has no effect.
    Ignored(&'static str),
    /// Kubernetes bookkeeping (labels, status, …): accepted without a word.
    Quiet,
}

use FieldUse::{Ignored, Kept, Mapped, Quiet};

/// The reason shared by the route settings Aviary's routers do not take from the resource.
const ROUTE: &str = "route settings are the router agent's";
/// The reason shared by the generated Services' metadata.
const SERVICE_META: &str = "Aviary does not label or annotate the Services it creates";
/// The reason shared by the session cookie's attributes.
const COOKIE: &str = "the session cookie carries only Max-Age";

/// Kubernetes `ObjectMeta`, for all three kinds: `name` and `namespace` are read, the rest is
/// the cluster's bookkeeping.
pub const OBJECT_META: &[(&str, FieldUse)] = &[
    ("metadata.name", Mapped),
    ("metadata.namespace", Mapped),
    ("metadata.labels", Quiet),
    ("metadata.annotations", Quiet),
    ("metadata.uid", Quiet),
    ("metadata.resourceVersion", Quiet),
    ("metadata.generation", Quiet),
    ("metadata.generateName", Quiet),
    ("metadata.creationTimestamp", Quiet),
    ("metadata.deletionTimestamp", Quiet),
    ("metadata.deletionGracePeriodSeconds", Quiet),
    ("metadata.finalizers", Quiet),
    ("metadata.ownerReferences", Quiet),
    ("metadata.managedFields", Quiet),
    ("metadata.selfLink", Quiet),
];

/// Every field of Flagger's `Canary` schema (`spec` and below; `metadata` is
/// [`OBJECT_META`]). Paths use `[]` for the items of a list.
pub const CANARY_FIELDS: &[(&str, FieldUse)] = &[
    ("apiVersion", Mapped),
    ("kind", Mapped),
    ("metadata", Mapped),
    ("spec", Mapped),
    ("status", Quiet),
    ("spec.provider", Mapped),
    ("spec.metricsServer", Mapped),
    ("spec.progressDeadlineSeconds", Mapped),
    ("spec.targetRef", Mapped),
    ("spec.targetRef.apiVersion", Mapped),
    ("spec.targetRef.kind", Mapped),
    ("spec.targetRef.name", Mapped),
    ("spec.autoscalerRef", Mapped),
    ("spec.autoscalerRef.apiVersion", Mapped),
    ("spec.autoscalerRef.kind", Mapped),
    ("spec.autoscalerRef.name", Mapped),
    (
        "spec.autoscalerRef.primaryScalerQueries",
        Ignored("the primary's scaler is a copy of the target's"),
    ),
    (
        "spec.autoscalerRef.primaryScalerReplicas",
        Ignored("the primary's scaler is a copy of the target's"),
    ),
    ("spec.ingressRef", Mapped),
    ("spec.ingressRef.apiVersion", Mapped),
    ("spec.ingressRef.kind", Mapped),
    ("spec.ingressRef.name", Mapped),
    ("spec.routeRef", Mapped),
    ("spec.routeRef.apiVersion", Mapped),
    ("spec.routeRef.kind", Mapped),
    ("spec.routeRef.name", Mapped),
    (
        "spec.upstreamRef",
        Ignored("Gloo upstreams are not an Aviary router"),
    ),
    ("spec.service", Mapped),
    ("spec.service.name", Mapped),
    ("spec.service.port", Mapped),
    ("spec.service.portName", Mapped),
    ("spec.service.targetPort", Mapped),
    ("spec.service.hosts", Mapped),
    ("spec.service.gateways", Mapped),
    ("spec.service.gatewayRefs", Mapped),
    ("spec.service.gatewayRefs[].name", Mapped),
    ("spec.service.gatewayRefs[].namespace", Mapped),
    ("spec.service.gatewayRefs[].sectionName", Mapped),
    (
        "spec.service.gatewayRefs[].group",
        Ignored("parents are Gateway API Gateways"),
    ),
    (
        "spec.service.gatewayRefs[].kind",
        Ignored("parents are Gateway API Gateways"),
    ),
    (
        "spec.service.gatewayRefs[].port",
        Ignored("the route attaches to the listener, not a port"),
    ),
    (
        "spec.service.appProtocol",
        Ignored("the Services' ports carry no protocol"),
    ),
    (
        "spec.service.trafficDistribution",
        Ignored("the Services carry no topology preference"),
    ),
    (
        "spec.service.portDiscovery",
        Ignored("only spec.service.port is routed"),
    ),
    (
        "spec.service.headless",
        Ignored("the Services Aviary creates have a cluster IP"),
    ),
    ("spec.service.timeout", Ignored(ROUTE)),
    ("spec.service.backendTimeout", Ignored(ROUTE)),
    (
        "spec.service.meshName",
        Ignored("App Mesh is not an Aviary router"),
    ),
    (
        "spec.service.backends",
        Ignored("App Mesh is not an Aviary router"),
    ),
    ("spec.service.delegation", Ignored(ROUTE)),
    ("spec.service.match", Ignored(ROUTE)),
    ("spec.service.retries", Ignored(ROUTE)),
    ("spec.service.rewrite", Ignored(ROUTE)),
    (
        "spec.service.mirror",
        Ignored("mirroring to the canary is spec.analysis.mirror"),
    ),
    ("spec.service.headers", Ignored(ROUTE)),
    ("spec.service.corsPolicy", Ignored(ROUTE)),
    ("spec.service.trafficPolicy", Ignored(ROUTE)),
    ("spec.service.apex", Ignored(SERVICE_META)),
    ("spec.service.primary", Ignored(SERVICE_META)),
    ("spec.service.canary", Ignored(SERVICE_META)),
    ("spec.service.unmanagedMetadata", Ignored(SERVICE_META)),
    ("spec.skipAnalysis", Mapped),
    ("spec.revertOnDeletion", Mapped),
    ("spec.suspend", Mapped),
    ("spec.analysis", Mapped),
    ("spec.analysis.interval", Mapped),
    ("spec.analysis.iterations", Mapped),
    ("spec.analysis.threshold", Mapped),
    ("spec.analysis.maxWeight", Mapped),
    ("spec.analysis.stepWeight", Mapped),
    ("spec.analysis.stepWeights", Mapped),
    ("spec.analysis.stepWeightPromotion", Mapped),
    ("spec.analysis.mirror", Mapped),
    ("spec.analysis.mirrorWeight", Mapped),
    (
        "spec.analysis.primaryReadyThreshold",
        Ignored("a workload is ready when all its pods are"),
    ),
    (
        "spec.analysis.canaryReadyThreshold",
        Ignored("a workload is ready when all its pods are"),
    ),
    ("spec.analysis.match", Mapped),
    ("spec.analysis.match[].headers", Mapped),
    (
        "spec.analysis.match[].queryParams",
        Ignored("Aviary matches headers and cookies; the rule matches on those alone"),
    ),
    (
        "spec.analysis.match[].sourceLabels",
        Ignored("Aviary matches headers and cookies; the rule matches on those alone"),
    ),
    ("spec.analysis.metrics", Mapped),
    ("spec.analysis.metrics[].name", Mapped),
    ("spec.analysis.metrics[].interval", Mapped),
    ("spec.analysis.metrics[].threshold", Mapped),
    ("spec.analysis.metrics[].thresholdRange", Mapped),
    ("spec.analysis.metrics[].thresholdRange.min", Mapped),
    ("spec.analysis.metrics[].thresholdRange.max", Mapped),
    ("spec.analysis.metrics[].query", Mapped),
    ("spec.analysis.metrics[].templateRef", Mapped),
    ("spec.analysis.metrics[].templateRef.name", Mapped),
    ("spec.analysis.metrics[].templateRef.namespace", Mapped),
    ("spec.analysis.metrics[].templateVariables", Mapped),
    ("spec.analysis.webhooks", Mapped),
    ("spec.analysis.webhooks[].name", Mapped),
    ("spec.analysis.webhooks[].type", Mapped),
    ("spec.analysis.webhooks[].url", Mapped),
    ("spec.analysis.webhooks[].timeout", Mapped),
    ("spec.analysis.webhooks[].retries", Mapped),
    ("spec.analysis.webhooks[].metadata", Mapped),
    (
        "spec.analysis.webhooks[].muteAlert",
        Ignored("alerts go where spec.analysis.alerts says"),
    ),
    (
        "spec.analysis.webhooks[].disableTLS",
        Ignored("webhook calls always verify TLS"),
    ),
    ("spec.analysis.alerts", Mapped),
    ("spec.analysis.alerts[].name", Mapped),
    ("spec.analysis.alerts[].severity", Mapped),
    ("spec.analysis.alerts[].providerRef", Mapped),
    ("spec.analysis.alerts[].providerRef.name", Mapped),
    ("spec.analysis.alerts[].providerRef.namespace", Mapped),
    ("spec.analysis.sessionAffinity", Mapped),
    ("spec.analysis.sessionAffinity.cookieName", Mapped),
    ("spec.analysis.sessionAffinity.maxAge", Mapped),
    ("spec.analysis.sessionAffinity.primaryCookieName", Mapped),
    ("spec.analysis.sessionAffinity.domain", Ignored(COOKIE)),
    ("spec.analysis.sessionAffinity.httpOnly", Ignored(COOKIE)),
    ("spec.analysis.sessionAffinity.partitioned", Ignored(COOKIE)),
    ("spec.analysis.sessionAffinity.path", Ignored(COOKIE)),
    ("spec.analysis.sessionAffinity.sameSite", Ignored(COOKIE)),
    ("spec.analysis.sessionAffinity.secure", Ignored(COOKIE)),
];

/// Every field of Flagger's `MetricTemplate` schema.
pub const METRIC_TEMPLATE_FIELDS: &[(&str, FieldUse)] = &[
    ("apiVersion", Mapped),
    ("kind", Mapped),
    ("metadata", Mapped),
    ("spec", Mapped),
    ("status", Quiet),
    ("spec.provider", Mapped),
    ("spec.provider.type", Mapped),
    ("spec.provider.address", Mapped),
    (
        "spec.provider.secretRef",
        Kept("the analyzer takes credentials from its own flags, not from Secrets"),
    ),
    ("spec.provider.secretRef.name", Mapped),
    (
        "spec.provider.insecureSkipVerify",
        Kept("the analyzer always verifies TLS"),
    ),
    (
        "spec.provider.headers",
        Ignored("the analyzer sends its own headers"),
    ),
    (
        "spec.provider.region",
        Ignored("the analyzer has no CloudWatch backend"),
    ),
    ("spec.query", Mapped),
];

/// Every field of Flagger's `AlertProvider` schema.
pub const ALERT_PROVIDER_FIELDS: &[(&str, FieldUse)] = &[
    ("apiVersion", Mapped),
    ("kind", Mapped),
    ("metadata", Mapped),
    ("spec", Mapped),
    ("status", Quiet),
    ("spec.type", Mapped),
    ("spec.channel", Mapped),
    ("spec.username", Mapped),
    ("spec.address", Mapped),
    ("spec.proxy", Mapped),
    ("spec.secretRef", Mapped),
    ("spec.secretRef.name", Mapped),
];

/// Flagger's metrics backends (`MetricTemplate` `spec.provider.type`).
const METRIC_PROVIDER_TYPES: &[&str] = &[
    "prometheus",
    "influxdb",
    "datadog",
    "externalmetrics",
    "stackdriver",
    "cloudwatch",
    "newrelic",
    "graphite",
    "dynatrace",
    "keptn",
    "splunk",
];

pub use crate::error::Warning;

/// A Flagger `MetricTemplate`: a query and the backend that answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricTemplate {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, defaulted to `default`.
    pub namespace: String,
    /// `spec.provider`.
    pub provider: TemplateProvider,
    /// `spec.query`, with Flagger's `{{ … }}` placeholders.
    pub query: String,
}

/// A `MetricTemplate`'s backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateProvider {
    /// `type`: `prometheus`, `datadog`, …
    pub kind: String,
    /// `address`: the backend's URL.
    pub address: Option<String>,
    /// `secretRef.name`: the Secret holding credentials (not read by Aviary's analyzer).
    pub secret_ref: Option<String>,
    /// `insecureSkipVerify` (not honoured: the analyzer verifies TLS).
    pub insecure_skip_verify: bool,
}

/// The chat tools a Flagger `AlertProvider` posts to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AlertProviderType {
    /// Slack.
    #[default]
    Slack,
    /// Microsoft Teams.
    MsTeams,
    /// Discord.
    Discord,
    /// Rocket.Chat.
    Rocket,
    /// Google Chat.
    GChat,
}

impl AlertProviderType {
    /// Every type, in Flagger's order.
    pub const ALL: [AlertProviderType; 5] = [
        AlertProviderType::Slack,
        AlertProviderType::MsTeams,
        AlertProviderType::Discord,
        AlertProviderType::Rocket,
        AlertProviderType::GChat,
    ];

    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertProviderType::Slack => "slack",
            AlertProviderType::MsTeams => "msteams",
            AlertProviderType::Discord => "discord",
            AlertProviderType::Rocket => "rocket",
            AlertProviderType::GChat => "gchat",
        }
    }

    /// Parses the YAML spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A Flagger `AlertProvider`. Kept for display: the notifier is configured in its own
/// settings, where an alert's `providerRef.name` must name a provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertProvider {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, defaulted to `default`.
    pub namespace: String,
    /// `spec.type`.
    pub kind: AlertProviderType,
    /// `spec.channel`.
    pub channel: Option<String>,
    /// `spec.username`.
    pub username: Option<String>,
    /// `spec.address`: the hook URL.
    pub address: Option<String>,
    /// `spec.proxy`.
    pub proxy: Option<String>,
    /// `spec.secretRef.name`: the Secret holding the hook URL.
    pub secret_ref: Option<String>,
}

/// Where `templateRef`s that are not in the input are looked up, e.g. templates a controller
/// fetched from the cluster.
pub trait TemplateSource {
    /// The template `namespace/name`, if the source has it.
    fn template(&self, namespace: &str, name: &str) -> Option<MetricTemplate>;
}

impl TemplateSource for Vec<MetricTemplate> {
    fn template(&self, namespace: &str, name: &str) -> Option<MetricTemplate> {
        self.iter()
            .find(|t| t.namespace == namespace && t.name == name)
            .cloned()
    }
}

/// Everything a file held, decoded and checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// The rollouts in file order: Aviary `Rollout`s as written, `Canary`s converted.
    pub rollouts: Vec<Rollout>,
    /// The `MetricTemplate`s.
    pub templates: Vec<MetricTemplate>,
    /// The `AlertProvider`s.
    pub providers: Vec<AlertProvider>,
    /// Fields accepted without effect, and values that could not be mapped.
    pub warnings: Vec<Warning>,
}

/// Decodes a file of one or more YAML documents, each an Aviary `Rollout` or a Flagger
/// `Canary`, `MetricTemplate` or `AlertProvider`. A `templateRef` must name a template in the
/// same file.
///
/// Errors: every problem in every document (a YAML syntax error alone, as `yaml`), with paths
/// as the module docs say. Never panics, whatever the input.
pub fn decode(text: &str) -> Result<Decoded, ValidationErrors> {
    decode_from(text, None)
}

/// [`decode()`], looking up in `source` the `templateRef`s the file does not hold.
pub fn decode_with(text: &str, source: &dyn TemplateSource) -> Result<Decoded, ValidationErrors> {
    decode_from(text, Some(source))
}

/// `rollout` as the Aviary YAML manifest the control API's `Apply` reads ([`crate::parse_rollout`]
/// gives the same rollout back).
///
/// Errors only for a value YAML cannot hold (a non-finite number, which validation refuses).
pub fn to_manifest(rollout: &Rollout) -> Result<String, serde_yaml::Error> {
    // Through JSON: serde_yaml writes enums as YAML tags (`!exact v`), the decoder reads
    // mappings (`{exact: v}`), as users write them.
    let json =
        serde_json::to_value(rollout).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    serde_yaml::to_string(&json)
}

/// The ingress a converted Canary drives: `<router>-<namespace>-<name>` (see the module docs),
/// cut to a DNS-1123 label.
pub fn ingress_name(provider: Option<&str>, namespace: &str, name: &str) -> String {
    let base = provider.map_or("", |p| p.split(':').next().unwrap_or(p));
    let router = match base {
        "" => "mesh",
        "linkerd" | "smi" => "smi",
        "gatewayapi" => "gateway-api",
        "nginx" => "nginx-ingress",
        other => other,
    };
    let mut s: String = format!("{router}-{namespace}-{name}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while s.ends_with('-') {
        s.pop();
    }
    s
}

/// The kinds of document a file may hold.
enum Kind {
    Rollout,
    Canary,
    MetricTemplate,
    AlertProvider,
}

fn kind_of(v: &Value) -> Result<Kind, FieldError> {
    let api = v.get("apiVersion").and_then(Value::as_str);
    match api {
        Some(API_VERSION) => match v.get("kind").and_then(Value::as_str) {
            Some("Canary") => Ok(Kind::Canary),
            Some("MetricTemplate") => Ok(Kind::MetricTemplate),
            Some("AlertProvider") => Ok(Kind::AlertProvider),
            _ => Err(FieldError::new(
                "kind",
                format!("must be Canary, MetricTemplate or AlertProvider for {API_VERSION}"),
            )),
        },
        Some(a) if a.starts_with("flagger.app/") => Err(FieldError::new(
            "apiVersion",
            format!("must be {API_VERSION}, the Flagger version Aviary reads"),
        )),
        _ => Ok(Kind::Rollout),
    }
}

/// `path` as reported for document `doc`.
fn prefixed(doc: usize, path: &str) -> String {
    if doc == 0 || path == "yaml" {
        return path.to_owned();
    }
    let at = format!("documents[{doc}]");
    match path.strip_prefix("document") {
        Some("") => at,
        Some(rest) if rest.starts_with('.') => format!("{at}{rest}"),
        _ => format!("{at}.{path}"),
    }
}

fn decode_from(
    text: &str,
    source: Option<&dyn TemplateSource>,
) -> Result<Decoded, ValidationErrors> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        match Value::deserialize(doc) {
            Ok(v) => docs.push(v),
            Err(e) => return Err(ValidationErrors(vec![decode::yaml_error(&e)])),
        }
    }
    if docs.iter().all(Value::is_null) {
        return Err(ValidationErrors(vec![FieldError::new(
            "document",
            "empty: expected a Rollout, or a Flagger Canary, MetricTemplate or AlertProvider",
        )]));
    }
    let mut errors: Vec<(usize, FieldError)> = Vec::new();
    let mut warnings: Vec<(usize, Warning)> = Vec::new();
    let mut rollouts: Vec<(usize, Rollout)> = Vec::new();
    let mut templates: Vec<(usize, MetricTemplate)> = Vec::new();
    let mut providers: Vec<(usize, AlertProvider)> = Vec::new();
    let mut canaries = Vec::new();
    for (i, v) in docs.iter().enumerate() {
        if v.is_null() {
            continue;
        }
        match kind_of(v) {
            Err(e) => errors.push((i, e)),
            Ok(Kind::Rollout) => match decode::rollout_from_value(v) {
                Ok((r, ws)) => {
                    rollouts.push((i, r));
                    warnings.extend(ws.into_iter().map(|w| (i, w)));
                }
                Err(e) => errors.extend(e.0.into_iter().map(|e| (i, e))),
            },
            Ok(Kind::Canary) => canaries.push(i),
            Ok(Kind::MetricTemplate) => {
                let mut w = Walk::new(METRIC_TEMPLATE_FIELDS);
                let t = w.metric_template(v);
                if w.finish(i, &mut errors, &mut warnings)
                    && let Some(t) = t
                {
                    templates.push((i, t));
                }
            }
            Ok(Kind::AlertProvider) => {
                let mut w = Walk::new(ALERT_PROVIDER_FIELDS);
                let p = w.alert_provider(v);
                if w.finish(i, &mut errors, &mut warnings)
                    && let Some(p) = p
                {
                    providers.push((i, p));
                }
            }
        }
    }
    let known: Vec<MetricTemplate> = templates.iter().map(|(_, t)| t.clone()).collect();
    let file_providers: Vec<AlertProvider> = providers.iter().map(|(_, p)| p.clone()).collect();
    for i in canaries {
        let mut w = Walk::new(CANARY_FIELDS);
        let refs = Refs {
            templates: &known,
            source,
            providers: &file_providers,
        };
        let rollout = w.canary(&docs[i], &refs);
        if let Some(r) = &rollout {
            decode::add_validation(r, &mut w.d.errors);
            // A metric whose template was not found has no query: that error says why.
            let unresolved: Vec<String> = (w.d.errors.iter())
                .filter_map(|e| e.path.strip_suffix(".templateRef"))
                .map(|m| format!("{m}.query"))
                .collect();
            w.d.errors.retain(|e| !unresolved.contains(&e.path));
            w.warnings.extend(r.spec.warnings());
        }
        if w.finish(i, &mut errors, &mut warnings)
            && let Some(r) = rollout
        {
            rollouts.push((i, r));
        }
    }
    rollouts.sort_by_key(|(i, _)| *i);
    let key = |ns: &str, name: &str| format!("{ns}/{name}");
    duplicates(
        rollouts
            .iter()
            .map(|(i, r)| (*i, key(r.namespace(), &r.metadata.name))),
        "rollout",
        &mut errors,
    );
    duplicates(
        templates
            .iter()
            .map(|(i, t)| (*i, key(&t.namespace, &t.name))),
        "MetricTemplate",
        &mut errors,
    );
    duplicates(
        providers
            .iter()
            .map(|(i, p)| (*i, key(&p.namespace, &p.name))),
        "AlertProvider",
        &mut errors,
    );
    if !errors.is_empty() {
        errors.sort_by_key(|(i, _)| *i);
        let errors = errors
            .into_iter()
            .map(|(i, e)| FieldError::new(prefixed(i, &e.path), e.message))
            .collect();
        return Err(ValidationErrors(errors));
    }
    Ok(Decoded {
        rollouts: rollouts.into_iter().map(|(_, r)| r).collect(),
        templates: templates.into_iter().map(|(_, t)| t).collect(),
        providers: providers.into_iter().map(|(_, p)| p).collect(),
        warnings: warnings
            .into_iter()
            .map(|(i, w)| Warning {
                path: prefixed(i, &w.path),
                message: w.message,
            })
            .collect(),
    })
}

/// Reports every `(document, key)` whose key an earlier document already used.
fn duplicates(
    items: impl Iterator<Item = (usize, String)>,
    what: &str,
    errors: &mut Vec<(usize, FieldError)>,
) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, key) in items {
        match seen.get(&key) {
            Some(first) => errors.push((
                i,
                FieldError::new(
                    "metadata.name",
                    format!("{what} {key} is also defined by documents[{first}]"),
                ),
            )),
            None => {
                seen.insert(key, i);
            }
        }
    }
}

/// What a Canary's references resolve against.
struct Refs<'a> {
    templates: &'a [MetricTemplate],
    source: Option<&'a dyn TemplateSource>,
    providers: &'a [AlertProvider],
}

impl Refs<'_> {
    fn template(&self, namespace: &str, name: &str) -> Option<MetricTemplate> {
        self.templates
            .iter()
            .find(|t| t.namespace == namespace && t.name == name)
            .cloned()
            .or_else(|| self.source.and_then(|s| s.template(namespace, name)))
    }
}

/// The static values of a Canary's template placeholders.
struct TemplateVars {
    name: String,
    namespace: String,
    target: String,
    service: String,
    ingress: String,
    route: String,
}

impl TemplateVars {
    fn get(&self, var: &str) -> Option<&str> {
        Some(match var {
            "name" => &self.name,
            "namespace" => &self.namespace,
            "target" => &self.target,
            "service" => &self.service,
            "ingress" => &self.ingress,
            "route" => &self.route,
            _ => return None,
        })
    }
}

/// Placeholders the analyzer fills per window; they stay in the query.
const ANALYZER_VARS: &[&str] = &["interval"];

/// Fills the static placeholders of a template query (see the module docs).
fn render(
    query: &str,
    vars: &TemplateVars,
    variables: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err("the query has a `{{` without its `}}`".into());
        };
        let name = after[..close].trim();
        if ANALYZER_VARS.contains(&name) {
            out.push_str(&format!("{{{{ {name} }}}}"));
        } else {
            let value = match name.strip_prefix("variables.") {
                Some(key) => variables.get(key).map(String::as_str).ok_or_else(|| {
                    format!(
                        "the query uses `{{{{ {name} }}}}` but templateVariables has no `{key}`"
                    )
                })?,
                None => vars.get(name).ok_or_else(|| {
                    format!(
                        "the query uses `{{{{ {name} }}}}`, which Aviary cannot fill (it knows \
                         name, namespace, target, service, ingress, route, variables.<key> and \
                         interval)"
                    )
                })?,
            };
            // Values land inside PromQL string literals, as the analyzer requires of its own.
            if value.contains(['"', '\\', '\n', '`']) || value.contains("{{") {
                return Err(format!(
                    "the value of `{name}` contains a quote, backslash, newline or `{{{{`"
                ));
            }
            out.push_str(value);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_http_url(s: &str) -> bool {
    s.strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// The direct children of schema path `parent` in `table`.
fn children<'t>(
    table: &'t [(&'static str, FieldUse)],
    parent: &str,
) -> impl Iterator<Item = (&'static str, FieldUse)> + 't {
    let parent = parent.to_owned();
    table.iter().filter_map(move |&(path, use_)| {
        let rest = if parent.is_empty() {
            path
        } else {
            path.strip_prefix(parent.as_str())?.strip_prefix('.')?
        };
        (!rest.contains(['.', '['])).then_some((rest, use_))
    })
}

/// A walk over one Flagger document, driven by its field table.
struct Walk {
    d: Decoder,
    warnings: Vec<Warning>,
    table: &'static [(&'static str, FieldUse)],
}

impl Walk {
    fn new(table: &'static [(&'static str, FieldUse)]) -> Self {
        Walk {
            d: Decoder::default(),
            warnings: Vec::new(),
            table,
        }
    }

    /// Moves this document's problems into the file's; true when it had no errors.
    fn finish(
        self,
        doc: usize,
        errors: &mut Vec<(usize, FieldError)>,
        warnings: &mut Vec<(usize, Warning)>,
    ) -> bool {
        let ok = self.d.errors.is_empty();
        errors.extend(self.d.errors.into_iter().map(|e| (doc, e)));
        warnings.extend(self.warnings.into_iter().map(|w| (doc, w)));
        ok
    }

    fn warn(&mut self, path: String, message: impl Into<String>) {
        self.warnings.push(Warning {
            path,
            message: message.into(),
        });
    }

    /// The mapping at `path`, whose schema path is `schema`: keys outside the table are errors,
    /// ignored or kept ones warnings.
    fn fields<'a>(&mut self, v: &'a Value, schema: &str, path: &str) -> Option<Fields<'a>> {
        let table = if schema == "metadata" {
            OBJECT_META
        } else {
            self.table
        };
        let kids: Vec<(&str, FieldUse)> = children(table, schema).collect();
        let known: Vec<&str> = kids.iter().map(|(k, _)| *k).collect();
        let f = self.d.fields(v, path, &known)?;
        for (key, use_) in kids {
            if f.get(key).is_none() {
                continue;
            }
            match use_ {
                Ignored(why) => self.warn(
                    f.path(key),
                    format!("accepted, has no effect in Aviary ({why})"),
                ),
                Kept(why) => self.warn(
                    f.path(key),
                    format!("kept, but has no effect in Aviary ({why})"),
                ),
                Mapped | Quiet => {}
            }
        }
        Some(f)
    }

    /// A mapping of strings; numbers and booleans are taken as their text, since authors
    /// write `retries: 3` where the schema says string.
    fn string_map(&mut self, f: &Fields<'_>, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = f.get(key) else {
            return out;
        };
        let mp = f.path(key);
        let Value::Mapping(map) = v else {
            self.d.expected(&mp, "a mapping of strings", v);
            return out;
        };
        for (k, val) in map {
            let Some(k) = k.as_str() else {
                self.d.err(&mp, "keys must be strings");
                continue;
            };
            match val {
                Value::String(s) => {
                    out.insert(k.to_owned(), s.clone());
                }
                Value::Number(n) => {
                    out.insert(k.to_owned(), n.to_string());
                }
                Value::Bool(b) => {
                    out.insert(k.to_owned(), b.to_string());
                }
                other => self.d.expected(&field(&mp, k), "a string", other),
            }
        }
        out
    }

    fn url(&mut self, f: &Fields<'_>, key: &str) -> Option<String> {
        let s = self.d.string(f, key)?;
        if !is_http_url(&s) {
            self.d.err(
                &f.path(key),
                format!("{s:?} must be an http:// or https:// URL"),
            );
        }
        Some(s)
    }

    /// `metadata`, namespace defaulted; a missing name is an error.
    fn object_meta(&mut self, f: &Fields<'_>) -> (String, String) {
        let mut out = (String::new(), "default".to_owned());
        let Some(m) = f.get("metadata") else {
            self.d.err("metadata", "required");
            return out;
        };
        let Some(g) = self.fields(m, "metadata", "metadata") else {
            return out;
        };
        match self.d.string(&g, "name") {
            Some(name) if !name.is_empty() => out.0 = name,
            Some(_) => self.d.err("metadata.name", "required"),
            None if g.get("name").is_none() => self.d.err("metadata.name", "required"),
            None => {}
        }
        if let Some(ns) = self.d.string(&g, "namespace") {
            out.1 = ns;
        }
        out
    }

    /// The `secretRef: {name}` at `key`.
    fn secret_ref(&mut self, f: &Fields<'_>, key: &str, schema: &str) -> Option<String> {
        let g = self.fields(f.get(key)?, schema, &f.path(key))?;
        let name = self.d.string(&g, "name");
        if name.is_none() {
            self.d.err(&g.path("name"), "required");
        }
        name
    }

    fn metric_template(&mut self, v: &Value) -> Option<MetricTemplate> {
        let f = self.fields(v, "", "document")?;
        let (name, namespace) = self.object_meta(&f);
        let Some(s) = f.get("spec") else {
            self.d.err("spec", "required");
            return None;
        };
        let g = self.fields(s, "spec", "spec")?;
        let mut provider = TemplateProvider::default();
        match g.get("provider") {
            None => self.d.err("spec.provider", "required"),
            Some(p) => {
                if let Some(p) = self.fields(p, "spec.provider", "spec.provider") {
                    match self.d.string(&p, "type") {
                        None if p.get("type").is_none() => self.d.err(&p.path("type"), "required"),
                        None => {}
                        Some(t) if METRIC_PROVIDER_TYPES.contains(&t.as_str()) => provider.kind = t,
                        Some(t) => self.d.err(
                            &p.path("type"),
                            format!(
                                "unknown provider type {t:?} (expected one of {})",
                                METRIC_PROVIDER_TYPES.join(", ")
                            ),
                        ),
                    }
                    provider.address = self.url(&p, "address");
                    provider.secret_ref =
                        self.secret_ref(&p, "secretRef", "spec.provider.secretRef");
                    provider.insecure_skip_verify =
                        self.d.bool(&p, "insecureSkipVerify").unwrap_or(false);
                }
            }
        }
        let query = self.d.string(&g, "query").unwrap_or_default();
        if query.trim().is_empty() && g.get("query").is_none_or(Value::is_string) {
            self.d.err("spec.query", "required");
        }
        Some(MetricTemplate {
            name,
            namespace,
            provider,
            query,
        })
    }

    fn alert_provider(&mut self, v: &Value) -> Option<AlertProvider> {
        let f = self.fields(v, "", "document")?;
        let (name, namespace) = self.object_meta(&f);
        let Some(s) = f.get("spec") else {
            self.d.err("spec", "required");
            return None;
        };
        let g = self.fields(s, "spec", "spec")?;
        let mut p = AlertProvider {
            name,
            namespace,
            channel: self.d.string(&g, "channel"),
            username: self.d.string(&g, "username"),
            address: self.url(&g, "address"),
            proxy: self.url(&g, "proxy"),
            secret_ref: self.secret_ref(&g, "secretRef", "spec.secretRef"),
            ..AlertProvider::default()
        };
        match self.d.string(&g, "type") {
            None if g.get("type").is_none() => self.d.err("spec.type", "required"),
            None => {}
            Some(t) => match AlertProviderType::parse(&t) {
                Some(k) => p.kind = k,
                None => {
                    let all: Vec<&str> =
                        AlertProviderType::ALL.iter().map(|t| t.as_str()).collect();
                    self.d.err(
                        "spec.type",
                        format!("unknown type {t:?} (expected one of {})", all.join(", ")),
                    );
                }
            },
        }
        if g.get("address").is_none() && g.get("secretRef").is_none() {
            self.d.err("spec", "needs address or secretRef");
        }
        Some(p)
    }

    fn canary(&mut self, v: &Value, refs: &Refs<'_>) -> Option<Rollout> {
        let f = self.fields(v, "", "document")?;
        let (name, namespace) = self.object_meta(&f);
        let explicit_ns = v
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .is_some_and(Value::is_string);
        let Some(s) = f.get("spec") else {
            self.d.err("spec", "required");
            return None;
        };
        let spec = self.canary_spec(s, &name, &namespace, refs);
        Some(Rollout {
            api_version: spec::API_VERSION.into(),
            kind: spec::KIND.into(),
            metadata: Metadata {
                name,
                namespace: explicit_ns.then_some(namespace),
            },
            spec,
        })
    }

    fn canary_spec(
        &mut self,
        v: &Value,
        name: &str,
        namespace: &str,
        refs: &Refs<'_>,
    ) -> RolloutSpec {
        let Some(f) = self.fields(v, "spec", "spec") else {
            return RolloutSpec::default();
        };
        let mut spec = RolloutSpec::default();
        match f.get("targetRef") {
            Some(t) => spec.target_ref = self.d.target_ref(t, "spec.targetRef"),
            None => self.d.err("spec.targetRef", "required"),
        }
        spec.provider = self.d.string(&f, "provider");
        let metrics_server = self.url(&f, "metricsServer");
        spec.progress_deadline_seconds = self.d.count(&f, "progressDeadlineSeconds", 1);
        if let Some(a) = f.get("autoscalerRef")
            && let Some(g) = self.fields(a, "spec.autoscalerRef", "spec.autoscalerRef")
        {
            spec.autoscaler_ref = Some(ObjectRef {
                api_version: self.d.string(&g, "apiVersion"),
                kind: self.d.string(&g, "kind"),
                name: self.d.string(&g, "name").unwrap_or_default(),
            });
        }
        if let Some(r) = f.get("ingressRef") {
            spec.ingress_ref = self.d.object_ref(r, "spec.ingressRef");
        }
        let route_ref = f
            .get("routeRef")
            .and_then(|r| self.d.object_ref(r, "spec.routeRef"));
        if let Some(s) = f.get("service") {
            spec.service = self.service(s);
        }
        spec.skip_analysis = self.d.bool(&f, "skipAnalysis").unwrap_or(false);
        spec.revert_on_deletion = self.d.bool(&f, "revertOnDeletion").unwrap_or(false);
        spec.suspend = self.d.bool(&f, "suspend").unwrap_or(false);
        let target = spec
            .target_ref
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let vars = TemplateVars {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service: spec
                .service
                .as_ref()
                .and_then(|s| s.name.clone())
                .unwrap_or_else(|| target.clone()),
            ingress: spec
                .ingress_ref
                .as_ref()
                .map_or_else(|| target.clone(), |r| r.name.clone()),
            route: route_ref.map_or_else(|| target.clone(), |r| r.name),
            target,
        };
        if let Some(a) = f.get("analysis") {
            let ctx = MetricContext {
                vars: &vars,
                refs,
                metrics_server: metrics_server.as_deref(),
            };
            spec.analysis = self.analysis(a, &ctx);
        }
        spec.ingresses = vec![IngressRef {
            name: ingress_name(spec.provider.as_deref(), namespace, name),
        }];
        spec
    }

    fn service(&mut self, v: &Value) -> Option<ServiceSpec> {
        let f = self.fields(v, "spec.service", "spec.service")?;
        let port = self.d.port(&f, "port");
        if port.is_none() && f.get("port").is_none() {
            self.d.err("spec.service.port", "required");
        }
        let target_port = match f.get("targetPort") {
            Some(Value::String(s)) => match s.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    self.warn(
                        f.path("targetPort"),
                        format!(
                            "named port {s:?} is not mapped: the Services target the port \
                             number spec.service.port ({})",
                            port.unwrap_or(0)
                        ),
                    );
                    None
                }
            },
            _ => self.d.port(&f, "targetPort"),
        };
        let mut svc = ServiceSpec {
            name: self.d.string(&f, "name"),
            port: port.unwrap_or(0),
            target_port,
            port_name: self.d.string(&f, "portName"),
            hosts: self.d.strings(&f, "hosts"),
            path_prefix: None,
            gateways: self.d.strings(&f, "gateways"),
            gateway_refs: Vec::new(),
        };
        if let Some(items) = self.d.list(&f, "gatewayRefs") {
            for (i, item) in items.iter().enumerate() {
                let p = index(&f.path("gatewayRefs"), i);
                if let Some(g) = self.fields(item, "spec.service.gatewayRefs[]", &p) {
                    let name = self.d.string(&g, "name");
                    if name.is_none() {
                        self.d.err(&g.path("name"), "required");
                    }
                    svc.gateway_refs.push(GatewayRef {
                        name: name.unwrap_or_default(),
                        namespace: self.d.string(&g, "namespace"),
                        section_name: self.d.string(&g, "sectionName"),
                    });
                }
            }
        }
        Some(svc)
    }

    fn analysis(&mut self, v: &Value, ctx: &MetricContext<'_>) -> Analysis {
        let schema = "spec.analysis";
        let Some(f) = self.fields(v, schema, schema) else {
            return Analysis::default();
        };
        let mut a = Analysis {
            interval: self.d.duration(&f, "interval"),
            threshold: self.d.count32(&f, "threshold", 1),
            max_weight: self.d.weight(&f, "maxWeight", 1),
            step_weight: self.d.weight(&f, "stepWeight", 1),
            // 0 is Flagger's "unset" for these two: a warning says so ([`RolloutSpec::warnings`]).
            step_weight_promotion: self.d.weight(&f, "stepWeightPromotion", 0),
            iterations: self.d.count32(&f, "iterations", 1),
            mirror: self.d.bool(&f, "mirror").unwrap_or(false),
            mirror_weight: self.d.weight(&f, "mirrorWeight", 0),
            ..Analysis::default()
        };
        if let Some(items) = self.d.list(&f, "stepWeights") {
            let mut ws = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(w) = self.d.weight_at(item, &index(&f.path("stepWeights"), i), 1) {
                    ws.push(w);
                }
            }
            a.step_weights = Some(ws);
        }
        if let Some(items) = self.d.list(&f, "match") {
            for (i, item) in items.iter().enumerate() {
                let rp = index(&f.path("match"), i);
                let Some(g) = self.fields(item, "spec.analysis.match[]", &rp) else {
                    continue;
                };
                let mut rule = MatchRule::default();
                if let Some(h) = g.get("headers") {
                    // Header names are case-insensitive; Aviary spells them in lower case.
                    rule.headers = self
                        .d
                        .conditions(h, &g.path("headers"))
                        .into_iter()
                        .map(|(k, m)| (k.to_ascii_lowercase(), m))
                        .collect();
                }
                a.matches.push(rule);
            }
        }
        if let Some(s) = f.get("sessionAffinity") {
            let sp = f.path("sessionAffinity");
            if let Some(g) = self.fields(s, &sp, &sp) {
                let cookie_name = self.d.string(&g, "cookieName");
                if cookie_name.is_none() && g.get("cookieName").is_none() {
                    self.d.err(&g.path("cookieName"), "required");
                }
                a.session_affinity = Some(SessionAffinity {
                    cookie_name: cookie_name.unwrap_or_default(),
                    max_age: self.d.count(&g, "maxAge", 1),
                    primary_cookie_name: self
                        .d
                        .string(&g, "primaryCookieName")
                        .filter(|n| !n.is_empty()),
                });
            }
        }
        if let Some(items) = self.d.list(&f, "metrics") {
            for (i, item) in items.iter().enumerate() {
                if let Some(m) = self.metric(item, &index(&f.path("metrics"), i), ctx) {
                    a.metrics.push(m);
                }
            }
        }
        if let Some(items) = self.d.list(&f, "webhooks") {
            for (i, item) in items.iter().enumerate() {
                if let Some(w) = self.webhook(item, &index(&f.path("webhooks"), i)) {
                    a.webhooks.push(w);
                }
            }
        }
        if let Some(items) = self.d.list(&f, "alerts") {
            for (i, item) in items.iter().enumerate() {
                let ap = index(&f.path("alerts"), i);
                if let Some(al) = self.alert(item, &ap, ctx) {
                    a.alerts.push(al);
                }
            }
        }
        a
    }

    fn metric(&mut self, v: &Value, path: &str, ctx: &MetricContext<'_>) -> Option<Metric> {
        let g = self.fields(v, "spec.analysis.metrics[]", path)?;
        let mut m = Metric {
            name: self.d.string(&g, "name").unwrap_or_default(),
            interval: self.d.duration(&g, "interval"),
            query: self.d.string(&g, "query"),
            ..Metric::default()
        };
        let threshold = self.d.float(&g, "threshold");
        if let Some(r) = g.get("thresholdRange") {
            let rp = g.path("thresholdRange");
            if let Some(t) = self.fields(r, "spec.analysis.metrics[].thresholdRange", &rp) {
                m.threshold_range = Some(ThresholdRange {
                    min: self.d.float(&t, "min"),
                    max: self.d.float(&t, "max"),
                });
            }
        } else if let Some(t) = threshold {
            let lower = m.name == "request-success-rate";
            m.threshold_range = Some(ThresholdRange {
                min: lower.then_some(t),
                max: (!lower).then_some(t),
            });
        }
        let variables = self.string_map(&g, "templateVariables");
        let template_ref = match g.get("templateRef") {
            Some(t) => {
                let tp = g.path("templateRef");
                self.fields(t, "spec.analysis.metrics[].templateRef", &tp)
                    .map(|t| {
                        let name = self.d.string(&t, "name");
                        if name.is_none() {
                            self.d.err(&t.path("name"), "required");
                        }
                        let ns = self.d.string(&t, "namespace");
                        (name, ns)
                    })
            }
            None => None,
        };
        match template_ref {
            Some((Some(name), ns)) => {
                let ns = ns.unwrap_or_else(|| ctx.vars.namespace.clone());
                let tp = g.path("templateRef");
                if g.get("query").is_some() {
                    self.warn(
                        g.path("query"),
                        "accepted, has no effect in Aviary (the templateRef's query is used, as in Flagger)",
                    );
                }
                match ctx.refs.template(&ns, &name) {
                    Some(t) => {
                        match render(&t.query, ctx.vars, &variables) {
                            Ok(q) => m.query = Some(q),
                            Err(e) => self.d.err(&tp, format!("MetricTemplate {ns}/{name}: {e}")),
                        }
                        m.provider = Some(MetricProvider {
                            kind: t.provider.kind,
                            address: t.provider.address,
                        });
                    }
                    None => {
                        let place = if ctx.refs.source.is_some() {
                            "in the file or the template source"
                        } else {
                            "in the file"
                        };
                        self.d
                            .err(&tp, format!("MetricTemplate {ns}/{name} not found {place}"));
                    }
                }
            }
            Some((None, _)) => {}
            None => {
                if !variables.is_empty() {
                    self.warn(
                        g.path("templateVariables"),
                        "accepted, has no effect in Aviary (there is no templateRef to fill)",
                    );
                }
                m.provider = ctx.metrics_server.map(|a| MetricProvider {
                    kind: "prometheus".into(),
                    address: Some(a.to_owned()),
                });
            }
        }
        Some(m)
    }

    fn webhook(&mut self, v: &Value, path: &str) -> Option<Webhook> {
        let g = self.fields(v, "spec.analysis.webhooks[]", path)?;
        let mut w = Webhook {
            name: self.d.string(&g, "name").unwrap_or_default(),
            url: self.d.string(&g, "url").unwrap_or_default(),
            timeout: self.d.duration(&g, "timeout"),
            retries: self.d.count32(&g, "retries", 0),
            metadata: self.string_map(&g, "metadata"),
            ..Webhook::default()
        };
        match self.d.string(&g, "type").as_deref() {
            None | Some("") => {}
            Some(t) => match WebhookType::parse(t) {
                Some(k) => w.kind = k,
                None => {
                    let all: Vec<&str> = WebhookType::ALL.iter().map(|t| t.as_str()).collect();
                    self.d.err(
                        &g.path("type"),
                        format!(
                            "unknown webhook type {t:?} (expected one of {})",
                            all.join(", ")
                        ),
                    );
                }
            },
        }
        Some(w)
    }

    fn alert(&mut self, v: &Value, path: &str, ctx: &MetricContext<'_>) -> Option<Alert> {
        let g = self.fields(v, "spec.analysis.alerts[]", path)?;
        let mut a = Alert {
            name: self.d.string(&g, "name").unwrap_or_default(),
            ..Alert::default()
        };
        match self.d.string(&g, "severity").as_deref() {
            None | Some("" | "info") => a.severity = Severity::Info,
            Some("warn") => a.severity = Severity::Warn,
            Some("error") => a.severity = Severity::Error,
            Some(s) => self.d.err(
                &g.path("severity"),
                format!("unknown severity {s:?} (expected info, warn or error)"),
            ),
        }
        let pp = g.path("providerRef");
        let Some(p) = g.get("providerRef") else {
            self.d.err(&pp, "required");
            return Some(a);
        };
        let p = self.fields(p, "spec.analysis.alerts[].providerRef", &pp)?;
        let name = self.d.string(&p, "name").unwrap_or_default();
        let ns = self
            .d
            .string(&p, "namespace")
            .unwrap_or_else(|| ctx.vars.namespace.clone());
        let found = ctx
            .refs
            .providers
            .iter()
            .any(|x| x.name == name && x.namespace == ns);
        if !found && !name.is_empty() {
            self.warn(
                pp,
                format!(
                    "AlertProvider {ns}/{name} is not in the file: the notifier's settings must \
                     name a provider {name:?}"
                ),
            );
        }
        a.provider_ref = ProviderRef { name };
        Some(a)
    }
}

/// What a Canary's metrics and alerts are resolved with.
struct MetricContext<'a> {
    vars: &'a TemplateVars,
    refs: &'a Refs<'a>,
    metrics_server: Option<&'a str>,
}

#[cfg(test)]
mod tests;
