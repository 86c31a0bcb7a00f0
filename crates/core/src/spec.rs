//! The `Rollout` document (DESIGN.md §4): typed spec, semantic validation and test builders.
//!
//! Owns the types the YAML file, the gRPC API and the KV record all carry. Field names follow
//! Flagger's `analysis` block and serialize in camelCase exactly as the YAML reads. Parsing YAML
//! text lives in [`mod@crate::decode`]; this module checks a spec however it was built
//! ([`Rollout::validate`], [`RolloutSpec::validate`]) and reports every problem with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::error::{Collector, ValidationErrors, Warning, field, index};
use crate::strategy::{self, Strategy};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "aviary.dev/v1alpha1";
/// The only `kind` this build understands.
pub const KIND: &str = "Rollout";
/// Default `analysis.interval` when none is given (Flagger's default).
pub const DEFAULT_INTERVAL: HumanDuration = HumanDuration::from_secs(60);
/// Default `analysis.threshold`: a single failed check rolls back unless told otherwise, the
/// safe choice for a rollout that did not say how tolerant to be.
pub const DEFAULT_THRESHOLD: u32 = 1;
/// Default `progressDeadlineSeconds` (Flagger's and Kubernetes' default).
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u64 = 600;
/// Default `sessionAffinity.maxAge` in seconds: one day, as in Flagger.
pub const DEFAULT_SESSION_MAX_AGE: u64 = 86_400;
/// Metric names the analyzer knows without a `query`.
pub const BUILTIN_METRICS: &[&str] = &["request-success-rate", "request-duration"];

/// A whole rollout document: `apiVersion`, `kind`, `metadata` and `spec`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// What to roll out and how.
    pub spec: RolloutSpec,
}

/// Identity of a rollout.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// DNS-1123 label, unique within the namespace.
    pub name: String,
    /// DNS-1123 label; `None` means `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The rollout's desired behaviour.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Every ingress whose traffic split this rollout drives (single cluster). Empty when
    /// `clusters` names the ingresses cluster by cluster.
    #[serde(default)]
    pub ingresses: Vec<IngressRef>,
    /// The member clusters a multi-cluster rollout spans, each with its own ingresses (served
    /// by that cluster's router agents) and metrics backend. Empty: a single-cluster rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<crate::clusters::ClusterSpec>,
    /// How the `clusters` move; `all` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_policy: Option<crate::clusters::ClusterPolicy>,
    /// Workload mode: the Deployment or DaemonSet the controller manages (Flagger's
    /// `targetRef`). Absent in endpoint mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Workload mode: the Services the controller creates and the routes address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// Workload mode: the router provider of the resource (`gateway-api`, `istio`, `smi`,
    /// `nginx`, …), as Flagger's `provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Workload mode: the HorizontalPodAutoscaler of the target, copied for the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<ObjectRef>,
    /// Workload mode: the Ingress that the `nginx` provider clones for the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_ref: Option<ObjectRef>,
    /// Workload mode: on deletion, restore the target and remove what Aviary created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert_on_deletion: bool,
    /// Workload mode: do not start new runs while set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// The stable version. In workload mode the controller fills it in (the `-primary`
    /// Service).
    #[serde(default)]
    pub primary: Target,
    /// The new version. In workload mode the controller fills it in (the `-canary` Service
    /// and the revision of the target's pod template and configs).
    #[serde(default)]
    pub canary: Target,
    /// How long the rollout may stay halted before it fails and rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u64>,
    /// Promote without metrics or webhooks.
    #[serde(default)]
    pub skip_analysis: bool,
    /// Explicit strategy; inferred from the other fields when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Flagger-style analysis settings.
    #[serde(default)]
    pub analysis: Analysis,
    /// Argo-style explicit step list (the general form of the Flagger shorthand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
}

/// A reference to an ingress served by a router agent.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRef {
    /// The ingress name the router agent owns.
    pub name: String,
}

/// One side of the split: a named set of upstream endpoints.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// DNS-1123 label naming this version.
    pub name: String,
    /// `host:port` upstreams.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Workload mode: the revision this side runs (a hash of the pod template and the
    /// configs it uses); a new canary revision starts a new run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// The kind of workload a [`TargetRef`] names.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// `apps/v1` `Deployment`.
    #[default]
    Deployment,
    /// `apps/v1` `DaemonSet`.
    DaemonSet,
}

impl WorkloadKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    /// Parses the Kubernetes kind.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Deployment" => Some(WorkloadKind::Deployment),
            "DaemonSet" => Some(WorkloadKind::DaemonSet),
            _ => None,
        }
    }
}

/// The workload a rollout manages in workload mode.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `apps/v1`.
    #[serde(default = "apps_v1")]
    pub api_version: String,
    /// Deployment or DaemonSet.
    pub kind: WorkloadKind,
    /// Name of the workload in the rollout's namespace.
    pub name: String,
}

fn apps_v1() -> String {
    "apps/v1".to_owned()
}

/// A reference to another object in the rollout's namespace (`autoscalerRef`, `ingressRef`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API version, e.g. `autoscaling/v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind, e.g. `HorizontalPodAutoscaler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
}

/// A Gateway API parent reference (`service.gatewayRefs`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// The Gateway's name.
    pub name: String,
    /// Its namespace (default: the rollout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// The Services of a workload-mode rollout (Flagger's `service` block, the fields Aviary uses).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The name of the Service clients call; `<name>-primary` and `<name>-canary` are derived
    /// from it (default: the `targetRef` name, as in Flagger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port the Services expose (workload mode; 0 when not given).
    #[serde(default)]
    pub port: u16,
    /// The container port traffic goes to (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// The name of the Services' port (default `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Host names routed (Gateway API hostnames, Istio hosts); on an ingress served by a
    /// router agent, the hosts whose requests this rollout's split takes (none: every host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The path prefix whose requests this rollout's split takes on an ingress (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Istio gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Gateway API parent Gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_refs: Vec<GatewayRef>,
}

impl ServiceSpec {
    /// The container port, defaulted to the service port.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }

    /// The port name, defaulted to `http`.
    pub fn port_name(&self) -> &str {
        self.port_name.as_deref().unwrap_or("http")
    }
}

/// The `analysis` block (Flagger field names and meanings).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Time between steps, and the length of each analysis window ([`DEFAULT_INTERVAL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Failed checks before rollback ([`DEFAULT_THRESHOLD`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Canary weight after which the canary is promoted (default 100, or the last of
    /// `stepWeights`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u8>,
    /// Weight added per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u8>,
    /// Explicit increasing weights, instead of `stepWeight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<u8>>,
    /// Weight moved per interval during promotion (default 100: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight_promotion: Option<u8>,
    /// Analysed iterations for A/B testing and blue/green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    /// A/B match rules: traffic matching any rule goes to the canary.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRule>,
    /// Mirror traffic to the canary (blue/green mirroring, or a first mirror step for canary).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror: bool,
    /// Percentage of requests mirrored (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_weight: Option<u8>,
    /// Sticky canary sessions via a cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Promote as soon as the analysis of a step passes with full confidence (sequential judge).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early_promotion: bool,
    /// What the end of the walk does when a sequential metric's judge has still not decided
    /// (its pass came from `thresholdRange` alone) once `inconclusiveHold` has passed
    /// ([`OnInconclusive::Rollback`] by default: not enough evidence is not a pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_inconclusive: Option<OnInconclusive>,
    /// How long the end of the walk holds, analysed every interval, for an undecided judge to
    /// decide before `onInconclusive` applies ([`DEFAULT_INCONCLUSIVE_HOLD`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_hold: Option<HumanDuration>,
    /// Metric checks run on every analysed step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    /// Gates and hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// Notification routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
}

/// One A/B match rule: all of its header and cookie conditions must hold.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchRule {
    /// Conditions on request headers; names are lower-case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Conditions on individual cookies by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, StringMatch>,
}

/// How a header or cookie value is compared.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Matches an RE2-syntax regular expression.
    Regex(String),
}

impl StringMatch {
    /// The operator's name as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            StringMatch::Exact(_) => "exact",
            StringMatch::Prefix(_) => "prefix",
            StringMatch::Suffix(_) => "suffix",
            StringMatch::Regex(_) => "regex",
        }
    }

    /// The operand.
    pub fn value(&self) -> &str {
        match self {
            StringMatch::Exact(v)
            | StringMatch::Prefix(v)
            | StringMatch::Suffix(v)
            | StringMatch::Regex(v) => v,
        }
    }
}

/// Cookie-based stickiness for canary users.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Name of the cookie set on canary responses.
    pub cookie_name: String,
    /// Cookie lifetime in seconds ([`DEFAULT_SESSION_MAX_AGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// Flagger's primary stickiness: primary responses set this cookie (lifetime: one
    /// analysis interval) and a request carrying it stays on the primary, so the canary's
    /// share does not creep above its weight as canary users accumulate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
}

/// One metric check.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// Built-in name ([`BUILTIN_METRICS`]) or any name with a `query`.
    pub name: String,
    /// Acceptable range of the canary's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRange>,
    /// Query window (defaults to the analysis interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Custom PromQL template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Metrics backend (defaults to the analyzer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<MetricProvider>,
    /// Largest allowed `canary - primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delta: Option<f64>,
    /// Largest allowed `canary / primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// What an empty result means.
    #[serde(default)]
    pub on_no_data: OnNoData,
    /// Fewer requests than this in the window is "no data".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// How the value is judged.
    #[serde(default)]
    pub judge: Judge,
}

/// Bounds for a metric value; either side may be open.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdRange {
    /// Lowest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A metrics backend.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    /// Backend kind, e.g. `prometheus`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The outcome of a metric query that returned no data.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNoData {
    /// Halt without counting a failed check (the default: no evidence is not good evidence).
    #[default]
    Inconclusive,
    /// Count a failed check.
    Fail,
    /// Treat as passing (for metrics that are legitimately empty, e.g. error counts).
    Pass,
}

/// What the end of the walk does with a judge that has not decided within `inconclusiveHold`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInconclusive {
    /// Roll back: the canary never showed it is within the judge's tolerance.
    #[default]
    Rollback,
    /// Promote on the `thresholdRange` passes alone (Flagger's rule), as if the metric were
    /// judged by threshold.
    Promote,
}

impl OnInconclusive {
    /// The spec's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Promote => "promote",
        }
    }
}

/// How long the end of the walk waits for an undecided judge when the spec does not say: ten
/// minutes, Flagger's default progress deadline — at 10 rps a canary reaches a p99 decision in
/// about that long (docs/judge.md).
pub const DEFAULT_INCONCLUSIVE_HOLD: HumanDuration = HumanDuration::from_secs(600);

/// How a metric value is judged.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Judge {
    /// Compare one value per window to `thresholdRange` / `maxDelta` / `maxRatio`.
    #[default]
    Threshold,
    /// Sequential test of canary against primary; may fail fast or promote early.
    Sequential,
}

/// When a webhook is called (Flagger's types).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    /// Gate before the rollout starts.
    ConfirmRollout,
    /// Run once before the first step; a failure counts as a failed check.
    PreRollout,
    /// Called on every analysis; a failure counts as a failed check.
    #[default]
    Rollout,
    /// Gate before each weight increase.
    ConfirmTrafficIncrease,
    /// Gate before promotion.
    ConfirmPromotion,
    /// Called after the rollout ends (promoted or rolled back).
    PostRollout,
    /// Polled during analysis; a 2xx asks for rollback. Also told when a rollback happens.
    Rollback,
    /// Receives every audit event.
    Event,
}

impl WebhookType {
    /// The name as written in YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            WebhookType::ConfirmRollout => "confirm-rollout",
            WebhookType::PreRollout => "pre-rollout",
            WebhookType::Rollout => "rollout",
            WebhookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            WebhookType::ConfirmPromotion => "confirm-promotion",
            WebhookType::PostRollout => "post-rollout",
            WebhookType::Rollback => "rollback",
            WebhookType::Event => "event",
        }
    }

    /// Every type, in YAML spelling order.
    pub const ALL: [WebhookType; 8] = [
        WebhookType::ConfirmRollout,
        WebhookType::PreRollout,
        WebhookType::Rollout,
        WebhookType::ConfirmTrafficIncrease,
        WebhookType::ConfirmPromotion,
        WebhookType::PostRollout,
        WebhookType::Rollback,
        WebhookType::Event,
    ];

    /// Parses the YAML spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One webhook attempt's timeout when the hook gives none.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before a webhook's first retry; it doubles up to [`MAX_WEBHOOK_BACKOFF`].
pub const WEBHOOK_BACKOFF: Duration = Duration::from_millis(200);

/// The longest wait between two attempts of a webhook.
pub const MAX_WEBHOOK_BACKOFF: Duration = Duration::from_secs(5);

/// The longest one call of a webhook can take: every attempt's `timeout` (else
/// [`DEFAULT_WEBHOOK_TIMEOUT`]) and the backoff between them. Whoever waits for a hook's
/// answer (the scheduler, the analyzer) waits at least this long, so a hook's own `timeout` is
/// honoured end to end.
pub fn webhook_call_budget(timeout: Option<Duration>, retries: u32) -> Duration {
    let attempt = timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
    let mut total = attempt;
    let mut delay = WEBHOOK_BACKOFF;
    for _ in 0..retries.min(64) {
        total = total.saturating_add(delay).saturating_add(attempt);
        delay = (delay * 2).min(MAX_WEBHOOK_BACKOFF);
    }
    total
}

/// The longest of several webhook calls made at once, each given as its `timeout` (`None`:
/// the default) and `retries`; `None` when there are none.
pub fn longest_webhook_call(
    calls: impl IntoIterator<Item = (Option<Duration>, u32)>,
) -> Option<Duration> {
    calls
        .into_iter()
        .map(|(timeout, retries)| webhook_call_budget(timeout, retries))
        .max()
}

/// A gate or hook called over HTTP.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Unique within the rollout.
    pub name: String,
    /// When it is called.
    #[serde(rename = "type", default)]
    pub kind: WebhookType,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Per-call timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Extra attempts after a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Passed through in the payload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Webhook {
    /// The longest one call of this hook can take ([`webhook_call_budget`]).
    pub fn call_budget(&self) -> Duration {
        webhook_call_budget(self.timeout.map(Duration::from), self.retries.unwrap_or(0))
    }
}

/// Alert severity.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Everything.
    #[default]
    Info,
    /// Halts, failures and rollbacks.
    Warn,
    /// Failures and rollbacks only.
    Error,
}

/// Where notifications go.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Unique within the rollout.
    pub name: String,
    /// Lowest severity sent.
    #[serde(default)]
    pub severity: Severity,
    /// The configured alert provider.
    pub provider_ref: ProviderRef,
}

/// A reference to an alert provider configured in the notifier.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// Provider name.
    pub name: String,
}

/// One Argo-style step.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Route this percentage of traffic to the canary.
    SetWeight(u8),
    /// Wait for a duration, or until resumed/promoted when no duration is given.
    Pause(PauseStep),
    /// Run an analysis (spec metrics unless overridden) and continue when it passes.
    Analysis(AnalysisStep),
    /// Wait for a manual approval.
    Approval(ApprovalStep),
    /// Send traffic matching these rules to the canary (in addition to the weight).
    SetHeaderRoute(HeaderRouteStep),
    /// Mirror this percentage of requests to the canary (0 turns mirroring off).
    SetMirror(MirrorStep),
    /// Names the position of the next step, so a failing `check` can return here.
    Stage(String),
    /// Call an HTTP check (2xx passes); on failure roll back, or return to an earlier stage at
    /// a lower weight a bounded number of times.
    Check(CheckStep),
}

/// `check: {name, url, timeout?, retries?, onFailure?}`: a test stage of a campaign.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckStep {
    /// Unique among the rollout's checks; named in events.
    pub name: String,
    /// `http://` or `https://` URL, POSTed Flagger's webhook payload; a 2xx passes.
    pub url: String,
    /// Per-attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Extra attempts after a failed call (transport errors, timeouts, 5xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// What a failure does; without it the rollout is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<CheckFailure>,
}

impl CheckStep {
    /// The check as the webhook the analyzer calls (judged as a `rollout` hook).
    pub fn webhook(&self) -> Webhook {
        Webhook {
            name: self.name.clone(),
            kind: WebhookType::Rollout,
            url: self.url.clone(),
            timeout: self.timeout,
            retries: self.retries,
            metadata: BTreeMap::new(),
        }
    }
}

/// `onFailure: {goTo, setWeight, maxAttempts?}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckFailure {
    /// The `stage` (before the check) the rollout returns to.
    pub go_to: String,
    /// The canary weight it returns with: lower than the weight the check failed at. It
    /// replaces the weight of the stage's first `setWeight`.
    pub set_weight: u8,
    /// How many times this check may send the rollout back (default 1); one more failure
    /// rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_returns: Option<u32>,
}

impl CheckFailure {
    /// Returns allowed when `maxReturns` is not given.
    pub const DEFAULT_MAX_RETURNS: u32 = 1;
    /// The most returns a check may allow.
    pub const MAX_RETURNS: u32 = 10;

    /// `maxReturns`, or its default.
    pub fn max_returns(&self) -> u32 {
        self.max_returns.unwrap_or(Self::DEFAULT_MAX_RETURNS)
    }
}

/// `pause: {}` or `pause: {duration: 5m}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long; `None` waits for Resume or Promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
}

/// `analysis: {}` with optional metrics override.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStep {
    /// Metrics for this step; `None` uses `spec.analysis.metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<Metric>>,
}

/// `approval: {}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalStep {}

/// `setHeaderRoute: {match: [...]}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRouteStep {
    /// Rules whose matching traffic goes to the canary.
    #[serde(rename = "match", default)]
    pub matches: Vec<MatchRule>,
}

/// `setMirror: {weight: N}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStep {
    /// Percentage of requests mirrored to the canary.
    pub weight: u8,
}

impl Analysis {
    /// The interval, defaulted.
    pub fn interval(&self) -> HumanDuration {
        self.interval.unwrap_or(DEFAULT_INTERVAL)
    }

    /// The threshold, defaulted.
    pub fn threshold(&self) -> u32 {
        self.threshold.unwrap_or(DEFAULT_THRESHOLD)
    }

    /// The end of the walk's hold for an undecided judge, defaulted.
    pub fn inconclusive_hold(&self) -> HumanDuration {
        self.inconclusive_hold.unwrap_or(DEFAULT_INCONCLUSIVE_HOLD)
    }

    /// What follows that hold, defaulted.
    pub fn on_inconclusive(&self) -> OnInconclusive {
        self.on_inconclusive.unwrap_or_default()
    }

    /// The weight after which to promote, as Flagger reckons it: the last of `stepWeights`
    /// when given (`maxWeight` is then ignored), else `maxWeight`, else 100.
    pub fn max_weight(&self) -> u8 {
        (self.step_weights.as_ref())
            .and_then(|w| w.last().copied())
            .or(self.max_weight)
            .map_or(100, |w| w.min(100))
    }

    /// Promotion step size, defaulted to 100 (at once); 0 is Flagger's "unset", so it is the
    /// default too.
    pub fn step_weight_promotion(&self) -> u8 {
        self.step_weight_promotion.filter(|&w| w > 0).unwrap_or(100)
    }

    /// Mirror percentage, defaulted to 100; 0 is Flagger's "unset" (no mirror percentage is
    /// set, so every request is mirrored), so it is the default too.
    pub fn mirror_weight(&self) -> u8 {
        self.mirror_weight.filter(|&w| w > 0).unwrap_or(100)
    }

    /// The webhooks of one type, in spec order.
    pub fn webhooks_of(&self, kind: WebhookType) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter().filter(move |w| w.kind == kind)
    }

    /// True when at least one webhook of this type is configured.
    pub fn has_webhook(&self, kind: WebhookType) -> bool {
        self.webhooks_of(kind).next().is_some()
    }
}

impl RolloutSpec {
    /// True in workload mode (a `targetRef` names the workload).
    pub fn is_workload(&self) -> bool {
        self.target_ref.is_some()
    }

    /// The progress deadline in seconds, defaulted.
    pub fn progress_deadline_seconds(&self) -> u64 {
        self.progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
    }

    /// The strategy in force: explicit or inferred. Errors when the explicit one contradicts
    /// the fields (see [`crate::strategy::resolve`]).
    pub fn strategy(&self) -> Result<Strategy, crate::error::FieldError> {
        strategy::resolve(self)
    }

    /// Checks the spec's semantics; every problem is reported with a path under `spec.`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        validate_spec(self, "spec", &mut c);
        c.finish()
    }

    /// The fields Flagger accepts but ignores (or reads as their default) in this combination,
    /// each as a [`Warning`] at its path under `spec.`. Aviary does as Flagger does; these say
    /// so. Meaningful on a spec that validates.
    ///
    /// - `stepWeight` with `stepWeights`: the steps are `stepWeight` apart and only the last
    ///   of `stepWeights` counts, as the maximum weight.
    /// - `maxWeight` with `stepWeights`: the last of `stepWeights` is the maximum weight.
    /// - `stepWeight`, `stepWeights` or `maxWeight` with `iterations`: A/B testing or
    ///   blue/green, which shift no weights.
    /// - `stepWeightPromotion: 0`: unset, promotion moves all traffic at once.
    /// - `mirrorWeight: 0`: unset, every request is mirrored.
    pub fn warnings(&self) -> Vec<Warning> {
        let a = &self.analysis;
        let ap = field("spec", "analysis");
        let mut out = Vec::new();
        let weights = [
            ("stepWeight", a.step_weight.is_some()),
            ("stepWeights", a.step_weights.is_some()),
            ("maxWeight", a.max_weight.is_some()),
        ];
        match strategy::infer(self) {
            Strategy::Canary => {
                if let Some(ws) = &a.step_weights {
                    let last = ws.last().map_or(100, |w| (*w).min(100));
                    if a.step_weight.is_some() {
                        out.push(Warning::new(
                            field(&ap, "stepWeights"),
                            format!(
                                "only its last weight ({last}) is used, as the maximum weight: \
                                 stepWeight is set and sets the steps (as Flagger)"
                            ),
                        ));
                    }
                    if a.max_weight.is_some() {
                        out.push(Warning::new(
                            field(&ap, "maxWeight"),
                            format!(
                                "ignored, stepWeights is set: its last weight ({last}) is the \
                                 maximum weight (as Flagger)"
                            ),
                        ));
                    }
                }
            }
            Strategy::Steps => {}
            other => {
                let what = if other == Strategy::AbTesting {
                    "A/B testing"
                } else {
                    "blue/green"
                };
                for (name, present) in weights {
                    if present {
                        out.push(Warning::new(
                            field(&ap, name),
                            format!(
                                "ignored, iterations is set: {what} shifts no weights (as Flagger)"
                            ),
                        ));
                    }
                }
            }
        }
        if a.step_weight_promotion == Some(0) {
            out.push(Warning::new(
                field(&ap, "stepWeightPromotion"),
                "0 means unset: promotion moves all traffic at once (as Flagger)",
            ));
        }
        if a.mirror_weight == Some(0) {
            out.push(Warning::new(
                field(&ap, "mirrorWeight"),
                "0 means unset: every request is mirrored (as Flagger)",
            ));
        }
        out
    }
}

impl Rollout {
    /// Checks the whole document (identity and spec). Usable on a value built in code, e.g. by
    /// the gRPC API; returns every problem with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        if self.api_version != API_VERSION {
            c.push("apiVersion", format!("must be {API_VERSION}"));
        }
        if self.kind != KIND {
            c.push("kind", format!("must be {KIND}"));
        }
        check_label(&self.metadata.name, "metadata.name", true, &mut c);
        if let Some(ns) = &self.metadata.namespace {
            check_label(ns, "metadata.namespace", true, &mut c);
        }
        validate_spec(&self.spec, "spec", &mut c);
        c.finish()
    }

    /// The namespace, defaulted to `default`.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// True when `s` is a DNS-1123 label: 1–63 lower-case alphanumerics or `-`, starting and ending
/// with an alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok_char(c) || c == '-')
        && s.starts_with(ok_char)
        && s.ends_with(ok_char)
}

fn check_label(value: &str, path: &str, required: bool, c: &mut Collector) {
    if value.is_empty() {
        if required {
            c.push(path, "required");
        }
    } else if !is_dns1123_label(value) {
        c.push(
            path,
            format!(
                "{value:?} is not a DNS-1123 label (lower-case letters, digits and '-', \
                 starting and ending with a letter or digit, at most 63 characters)"
            ),
        );
    }
}

fn check_weight(value: u8, path: &str, min: u8, c: &mut Collector) {
    if value < min || value > 100 {
        c.push(path, format!("must be between {min} and 100, got {value}"));
    }
}

fn check_duration(value: Option<HumanDuration>, path: &str, c: &mut Collector) {
    if value.is_some_and(|d| d.is_zero()) {
        c.push(path, "duration must be greater than zero");
    }
}

fn check_endpoint(ep: &str, path: &str, c: &mut Collector) {
    let Some((host, port)) = ep.rsplit_once(':') else {
        c.push(path, format!("{ep:?} must be host:port"));
        return;
    };
    // The host by the router agent's rule (`route::parse_endpoint`), with a port it accepts.
    if crate::route::parse_endpoint(&format!("{host}:1")).is_none() {
        c.push(path, format!("{ep:?} has an invalid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => c.push(path, format!("{ep:?} has an invalid port")),
    }
}

fn check_url(url: &str, path: &str, c: &mut Collector) {
    if url.is_empty() {
        c.push(path, "required");
        return;
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {}
        _ => c.push(path, format!("{url:?} must be an http:// or https:// URL")),
    }
}

fn check_target(t: &Target, path: &str, c: &mut Collector) {
    check_label(&t.name, &field(path, "name"), true, c);
    let eps = field(path, "endpoints");
    if t.endpoints.is_empty() {
        c.push(&eps, "at least one endpoint is required");
    }
    for (i, ep) in t.endpoints.iter().enumerate() {
        check_endpoint(ep, &index(&eps, i), c);
    }
}

fn check_string_match(m: &StringMatch, path: &str, c: &mut Collector) {
    let p = field(path, m.kind());
    match m {
        StringMatch::Regex(re) => {
            if let Err(e) = regex::Regex::new(re) {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or("invalid").trim();
                c.push(&p, format!("invalid regex: {last}"));
            }
        }
        other => {
            if other.value().is_empty() {
                c.push(&p, "must not be empty");
            }
        }
    }
}

/// What an invalid cookie name is told ([`crate::route::is_cookie_token`]).
const COOKIE_NAME: &str = "invalid cookie name (letters, digits and - _ . ~ ! * + only)";

/// Validates a list of match rules at `path` (e.g. `spec.analysis.match`).
pub(crate) fn check_matches(rules: &[MatchRule], path: &str, c: &mut Collector) {
    for (i, rule) in rules.iter().enumerate() {
        let rp = index(path, i);
        if rule.headers.is_empty() && rule.cookies.is_empty() {
            c.push(
                &rp,
                "a match rule needs at least one header or cookie condition",
            );
        }
        for (name, m) in &rule.headers {
            let hp = field(&field(&rp, "headers"), name);
            if name.chars().any(|ch| ch.is_ascii_uppercase()) {
                c.push(&hp, "header names must be lower-case");
            } else if !crate::route::is_header_name(name) {
                c.push(
                    &hp,
                    "invalid header name (lower-case letters, digits and '-' only)",
                );
            }
            check_string_match(m, &hp, c);
        }
        for (name, m) in &rule.cookies {
            let cp = field(&field(&rp, "cookies"), name);
            if !crate::route::is_cookie_token(name) {
                c.push(&cp, COOKIE_NAME);
            }
            check_string_match(m, &cp, c);
        }
    }
}

fn check_metrics(metrics: &[Metric], path: &str, c: &mut Collector) {
    let mut seen = BTreeSet::new();
    for (i, m) in metrics.iter().enumerate() {
        let mp = index(path, i);
        if m.name.is_empty() {
            c.push(&field(&mp, "name"), "required");
        } else if !seen.insert(m.name.as_str()) {
            c.push(
                &field(&mp, "name"),
                format!("duplicate metric {:?}", m.name),
            );
        }
        let builtin = BUILTIN_METRICS.contains(&m.name.as_str());
        match &m.query {
            Some(q) if q.trim().is_empty() => c.push(&field(&mp, "query"), "must not be empty"),
            None if !builtin && !m.name.is_empty() => c.push(
                &field(&mp, "query"),
                format!(
                    "required for a custom metric (built-in metrics are {})",
                    BUILTIN_METRICS.join(", ")
                ),
            ),
            _ => {}
        }
        if let Some(r) = &m.threshold_range {
            let rp = field(&mp, "thresholdRange");
            if r.min.is_none() && r.max.is_none() {
                c.push(&rp, "needs min, max or both");
            }
            for (name, v) in [("min", r.min), ("max", r.max)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    c.push(&field(&rp, name), "must be a finite number");
                }
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max)
                && lo > hi
            {
                c.push(&rp, format!("min ({lo}) is greater than max ({hi})"));
            }
        }
        if m.threshold_range.is_none() && m.max_delta.is_none() && m.max_ratio.is_none() {
            c.push(&mp, "needs thresholdRange, maxDelta or maxRatio");
        }
        if let Some(d) = m.max_delta
            && !(d.is_finite() && d >= 0.0)
        {
            c.push(&field(&mp, "maxDelta"), "must be a number >= 0");
        }
        if let Some(r) = m.max_ratio
            && !(r.is_finite() && r > 0.0)
        {
            c.push(&field(&mp, "maxRatio"), "must be a number > 0");
        }
        check_duration(m.interval, &field(&mp, "interval"), c);
        if let Some(p) = &m.provider {
            let pp = field(&mp, "provider");
            if p.kind.is_empty() {
                c.push(&field(&pp, "type"), "required");
            }
            if let Some(a) = &p.address {
                check_url(a, &field(&pp, "address"), c);
            }
        }
    }
}

fn validate_analysis(a: &Analysis, path: &str, c: &mut Collector) {
    check_duration(a.interval, &field(path, "interval"), c);
    if a.threshold == Some(0) {
        c.push(&field(path, "threshold"), "must be at least 1");
    }
    if let Some(w) = a.max_weight {
        check_weight(w, &field(path, "maxWeight"), 1, c);
    }
    if let Some(w) = a.step_weight {
        check_weight(w, &field(path, "stepWeight"), 1, c);
    }
    if let Some(ws) = &a.step_weights {
        let wp = field(path, "stepWeights");
        if ws.is_empty() {
            c.push(&wp, "must not be empty");
        }
        for (i, w) in ws.iter().enumerate() {
            check_weight(*w, &index(&wp, i), 1, c);
            if i > 0 && *w <= ws[i - 1] {
                c.push(
                    &index(&wp, i),
                    format!(
                        "weights must increase: {w} is not greater than {}",
                        ws[i - 1]
                    ),
                );
            }
        }
    }
    if let Some(w) = a.step_weight_promotion {
        check_weight(w, &field(path, "stepWeightPromotion"), 0, c);
    }
    if a.iterations == Some(0) {
        c.push(&field(path, "iterations"), "must be at least 1");
    }
    if let Some(w) = a.mirror_weight {
        check_weight(w, &field(path, "mirrorWeight"), 0, c);
    }
    if !a.matches.is_empty() && a.iterations.is_none() {
        c.push(
            &field(path, "match"),
            "requires iterations (A/B testing analyses matched traffic for a number of iterations)",
        );
    }
    check_matches(&a.matches, &field(path, "match"), c);
    if let Some(s) = &a.session_affinity {
        let sp = field(path, "sessionAffinity");
        if s.cookie_name.is_empty() {
            c.push(&field(&sp, "cookieName"), "required");
        } else if !crate::route::is_cookie_token(&s.cookie_name) {
            c.push(&field(&sp, "cookieName"), COOKIE_NAME);
        }
        if s.max_age == Some(0) {
            c.push(&field(&sp, "maxAge"), "must be at least 1 second");
        }
        if let Some(p) = &s.primary_cookie_name {
            let pp = field(&sp, "primaryCookieName");
            if !crate::route::is_cookie_token(p) {
                c.push(&pp, COOKIE_NAME);
            } else if *p == s.cookie_name {
                c.push(&pp, "must differ from cookieName");
            }
        }
        if a.iterations.is_some() {
            c.push(
                &sp,
                "only applies to the canary strategy (remove iterations)",
            );
        }
    }
    check_metrics(&a.metrics, &field(path, "metrics"), c);
    let mut names = BTreeSet::new();
    for (i, w) in a.webhooks.iter().enumerate() {
        let wp = index(&field(path, "webhooks"), i);
        if w.name.is_empty() {
            c.push(&field(&wp, "name"), "required");
        } else if !names.insert(w.name.as_str()) {
            c.push(
                &field(&wp, "name"),
                format!("duplicate webhook {:?}", w.name),
            );
        }
        check_url(&w.url, &field(&wp, "url"), c);
        check_duration(w.timeout, &field(&wp, "timeout"), c);
    }
    let mut names = BTreeSet::new();
    for (i, al) in a.alerts.iter().enumerate() {
        let ap = index(&field(path, "alerts"), i);
        if al.name.is_empty() {
            c.push(&field(&ap, "name"), "required");
        } else if !names.insert(al.name.as_str()) {
            c.push(
                &field(&ap, "name"),
                format!("duplicate alert {:?}", al.name),
            );
        }
        if al.provider_ref.name.is_empty() {
            c.push(&field(&field(&ap, "providerRef"), "name"), "required");
        }
    }
}

fn validate_steps(steps: &[Step], path: &str, c: &mut Collector) {
    if steps.is_empty() {
        c.push(path, "must not be empty");
    }
    for (i, s) in steps.iter().enumerate() {
        let sp = index(path, i);
        match s {
            Step::SetWeight(w) => check_weight(*w, &field(&sp, "setWeight"), 0, c),
            Step::Pause(p) => {
                check_duration(p.duration, &field(&field(&sp, "pause"), "duration"), c)
            }
            Step::Analysis(a) => {
                if let Some(m) = &a.metrics {
                    check_metrics(m, &field(&field(&sp, "analysis"), "metrics"), c);
                }
            }
            Step::Approval(_) => {}
            Step::SetHeaderRoute(h) => {
                let mp = field(&field(&sp, "setHeaderRoute"), "match");
                if h.matches.is_empty() {
                    c.push(&mp, "at least one match rule is required");
                }
                check_matches(&h.matches, &mp, c);
            }
            Step::SetMirror(m) => {
                check_weight(m.weight, &field(&field(&sp, "setMirror"), "weight"), 0, c)
            }
            Step::Stage(name) => {
                let np = field(&sp, "stage");
                check_label(name, &np, true, c);
                if steps[..i]
                    .iter()
                    .any(|s| matches!(s, Step::Stage(n) if n == name))
                {
                    c.push(&np, format!("duplicate stage {name:?}"));
                }
            }
            Step::Check(k) => check_check_step(steps, i, k, &field(&sp, "check"), c),
        }
    }
}

/// A `check` step: its call, and a return that goes to an earlier stage at a lower weight.
fn check_check_step(steps: &[Step], i: usize, k: &CheckStep, path: &str, c: &mut Collector) {
    check_label(&k.name, &field(path, "name"), true, c);
    if steps[..i]
        .iter()
        .any(|s| matches!(s, Step::Check(o) if o.name == k.name))
    {
        c.push(
            &field(path, "name"),
            format!("duplicate check {:?}", k.name),
        );
    }
    check_url(&k.url, &field(path, "url"), c);
    check_duration(k.timeout, &field(path, "timeout"), c);
    let Some(f) = &k.on_failure else { return };
    let fp = field(path, "onFailure");
    if !steps[..i]
        .iter()
        .any(|s| matches!(s, Step::Stage(n) if *n == f.go_to))
    {
        c.push(
            &field(&fp, "goTo"),
            format!("{:?} names no stage before this check", f.go_to),
        );
    }
    // The weight the check runs at: the last setWeight before it.
    let at = steps[..i]
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::SetWeight(w) => Some(*w),
            _ => None,
        })
        .unwrap_or(0);
    if f.set_weight >= at {
        c.push(
            &field(&fp, "setWeight"),
            format!(
                "{} is not lower than the weight the check runs at ({at})",
                f.set_weight
            ),
        );
    }
    if !(1..=CheckFailure::MAX_RETURNS).contains(&f.max_returns()) {
        c.push(
            &field(&fp, "maxReturns"),
            format!("must be 1 to {}", CheckFailure::MAX_RETURNS),
        );
    }
}

fn validate_spec(s: &RolloutSpec, path: &str, c: &mut Collector) {
    let ip = field(path, "ingresses");
    if s.clusters.is_empty() {
        if s.ingresses.is_empty() {
            c.push(&ip, "at least one ingress is required");
        }
        if s.cluster_policy.is_some() {
            c.push(
                &field(path, "clusterPolicy"),
                "says how spec.clusters move; give spec.clusters or leave it out",
            );
        }
    } else {
        validate_clusters(s, path, c);
    }
    let mut seen = BTreeSet::new();
    for (i, ing) in s.ingresses.iter().enumerate() {
        let np = field(&index(&ip, i), "name");
        check_label(&ing.name, &np, true, c);
        if !ing.name.is_empty() && !seen.insert(ing.name.as_str()) {
            c.push(&np, format!("duplicate ingress {:?}", ing.name));
        }
    }
    if let Some(t) = &s.target_ref {
        let tp = field(path, "targetRef");
        check_label(&t.name, &field(&tp, "name"), true, c);
        if t.api_version != "apps/v1" {
            c.push(&field(&tp, "apiVersion"), "must be apps/v1");
        }
        match &s.service {
            None => c.push(&field(path, "service"), "required with targetRef"),
            Some(svc) => {
                let sp = field(path, "service");
                if let Some(name) = &svc.name {
                    check_label(name, &field(&sp, "name"), true, c);
                }
                if svc.port == 0 {
                    c.push(&field(&sp, "port"), "must be between 1 and 65535");
                }
                if svc.target_port == Some(0) {
                    c.push(&field(&sp, "targetPort"), "must be between 1 and 65535");
                }
                if let Some(name) = &svc.port_name {
                    check_label(name, &field(&sp, "portName"), true, c);
                }
                crate::route::check(&svc.hosts, svc.path_prefix.as_deref(), &sp, c);
            }
        }
        // The controller fills the two sides in; what it filled in is checked like any target.
        if !s.primary.name.is_empty() {
            check_target(&s.primary, &field(path, "primary"), c);
        }
        if !s.canary.name.is_empty() {
            check_target(&s.canary, &field(path, "canary"), c);
        }
    } else {
        if let Some(svc) = &s.service {
            // Without a target, the service block only selects the ingress's requests.
            let sp = field(path, "service");
            let workload_only = [
                ("name", svc.name.is_some()),
                ("port", svc.port != 0),
                ("targetPort", svc.target_port.is_some()),
                ("portName", svc.port_name.is_some()),
                ("gateways", !svc.gateways.is_empty()),
                ("gatewayRefs", !svc.gateway_refs.is_empty()),
            ];
            for (name, _) in workload_only.iter().filter(|(_, set)| *set) {
                c.push(&field(&sp, name), "only meaningful with targetRef");
            }
            crate::route::check(&svc.hosts, svc.path_prefix.as_deref(), &sp, c);
        }
        check_target(&s.primary, &field(path, "primary"), c);
        check_target(&s.canary, &field(path, "canary"), c);
    }
    if !s.primary.name.is_empty() && s.primary.name == s.canary.name {
        c.push(
            &field(&field(path, "canary"), "name"),
            "must differ from spec.primary.name",
        );
    }
    if s.progress_deadline_seconds == Some(0) {
        c.push(
            &field(path, "progressDeadlineSeconds"),
            "must be at least 1",
        );
    }
    let ap = field(path, "analysis");
    validate_analysis(&s.analysis, &ap, c);
    if let Some(steps) = &s.steps {
        let sp = field(path, "steps");
        validate_steps(steps, &sp, c);
        for (name, present) in [
            ("stepWeight", s.analysis.step_weight.is_some()),
            ("stepWeights", s.analysis.step_weights.is_some()),
            ("maxWeight", s.analysis.max_weight.is_some()),
            ("iterations", s.analysis.iterations.is_some()),
            ("match", !s.analysis.matches.is_empty()),
        ] {
            if present {
                c.push(
                    &sp,
                    format!("cannot be used together with spec.analysis.{name}"),
                );
            }
        }
    }
    match strategy::resolve(s) {
        Err(e) => c.errors.push(e),
        Ok(Strategy::Canary) => {
            if s.analysis.step_weight.is_none() && s.analysis.step_weights.is_none() {
                c.push(
                    &field(&ap, "stepWeight"),
                    "required for the canary strategy (or give stepWeights, iterations or steps)",
                );
            }
        }
        // With iterations, Flagger runs A/B testing or blue/green and ignores the weights:
        // [`RolloutSpec::warnings`] says so.
        Ok(_) => {}
    }
}

/// A multi-cluster spec: the clusters as [`crate::clusters::validate`] checks them, each
/// ingress a DNS-1123 label, each endpoint `host:port`, each metric provider complete, no top-level `ingresses`, and no
/// workload mode (the controller manages one cluster's workloads).
fn validate_clusters(s: &RolloutSpec, path: &str, c: &mut Collector) {
    let cp = field(path, "clusters");
    if !s.ingresses.is_empty() {
        c.push(
            &field(path, "ingresses"),
            "give the ingresses in each of spec.clusters, not here, when clusters are set",
        );
    }
    if s.target_ref.is_some() {
        c.push(
            &field(path, "targetRef"),
            "workload mode is single-cluster; cannot be used together with spec.clusters",
        );
    }
    c.errors.extend(crate::clusters::validate(&s.clusters, &cp));
    for (i, cluster) in s.clusters.iter().enumerate() {
        let at = index(&cp, i);
        for (j, ingress) in cluster.ingresses.iter().enumerate() {
            let np = field(&index(&field(&at, "ingresses"), j), "name");
            check_label(&ingress.name, &np, true, c);
        }
        for (name, endpoints) in [
            ("primaryEndpoints", &cluster.primary_endpoints),
            ("canaryEndpoints", &cluster.canary_endpoints),
        ] {
            for (j, ep) in endpoints.iter().enumerate() {
                check_endpoint(ep, &index(&field(&at, name), j), c);
            }
        }
        if let Some(p) = &cluster.metric_provider {
            let pp = field(&at, "metricProvider");
            if p.kind.is_empty() {
                c.push(&field(&pp, "type"), "required");
            }
            if let Some(a) = &p.address {
                check_url(a, &field(&pp, "address"), c);
            }
        }
    }
}

/// Builders for tests and fixtures: `RolloutSpec::test().step_weight(20).max_weight(50)`.
impl RolloutSpec {
    /// A valid canary spec: ingress `edge`, `podinfo-v1` → `podinfo-v2` on loopback,
    /// `interval: 1m`, `threshold: 5`, `maxWeight: 50`, `stepWeight: 10`, one success-rate
    /// metric.
    pub fn test() -> Self {
        RolloutSpec {
            ingresses: vec![IngressRef {
                name: "edge".into(),
            }],
            primary: Target {
                name: "podinfo-v1".into(),
                endpoints: vec!["127.0.0.1:9001".into()],
                revision: None,
            },
            canary: Target {
                name: "podinfo-v2".into(),
                endpoints: vec!["127.0.0.1:9002".into()],
                revision: None,
            },
            target_ref: None,
            service: None,
            provider: None,
            autoscaler_ref: None,
            ingress_ref: None,
            revert_on_deletion: false,
            suspend: false,
            progress_deadline_seconds: None,
            skip_analysis: false,
            strategy: None,
            analysis: Analysis {
                interval: Some(DEFAULT_INTERVAL),
                threshold: Some(5),
                max_weight: Some(50),
                step_weight: Some(10),
                metrics: vec![Metric {
                    name: "request-success-rate".into(),
                    threshold_range: Some(ThresholdRange {
                        min: Some(99.0),
                        max: None,
                    }),
                    ..Metric::default()
                }],
                ..Analysis::default()
            },
            steps: None,
            clusters: Vec::new(),
            cluster_policy: None,
        }
    }

    /// Makes this a multi-cluster rollout over `clusters` (name, ingress names), policy `all`:
    /// `spec.ingresses` is cleared.
    pub fn clusters(mut self, clusters: &[(&str, &[&str])]) -> Self {
        self.ingresses.clear();
        self.clusters = clusters
            .iter()
            .map(|(name, ingresses)| crate::clusters::ClusterSpec {
                name: (*name).to_owned(),
                ingresses: ingresses
                    .iter()
                    .map(|i| IngressRef {
                        name: (*i).to_owned(),
                    })
                    .collect(),
                ..crate::clusters::ClusterSpec::default()
            })
            .collect();
        self
    }

    /// Sets `stepWeight` (and clears `stepWeights`).
    pub fn step_weight(mut self, w: u8) -> Self {
        self.analysis.step_weight = Some(w);
        self.analysis.step_weights = None;
        self
    }

    /// Sets `stepWeights` (and clears `stepWeight` and `maxWeight`).
    pub fn step_weights(mut self, ws: &[u8]) -> Self {
        self.analysis.step_weights = Some(ws.to_vec());
        self.analysis.step_weight = None;
        self.analysis.max_weight = None;
        self
    }

    /// Sets `maxWeight`.
    pub fn max_weight(mut self, w: u8) -> Self {
        self.analysis.max_weight = Some(w);
        self
    }

    /// Sets `interval`.
    pub fn interval(mut self, d: HumanDuration) -> Self {
        self.analysis.interval = Some(d);
        self
    }

    /// Sets `threshold`.
    pub fn threshold(mut self, n: u32) -> Self {
        self.analysis.threshold = Some(n);
        self
    }

    /// Sets `stepWeightPromotion`.
    pub fn step_weight_promotion(mut self, w: u8) -> Self {
        self.analysis.step_weight_promotion = Some(w);
        self
    }

    /// Turns the spec into blue/green with `iterations` (clears canary weights).
    pub fn iterations(mut self, n: u32) -> Self {
        self.analysis.iterations = Some(n);
        self.analysis.step_weight = None;
        self.analysis.step_weights = None;
        self.analysis.max_weight = None;
        self
    }

    /// Adds an A/B rule matching header `name` exactly equal to `value`.
    pub fn match_header(mut self, name: &str, value: &str) -> Self {
        let mut rule = MatchRule::default();
        rule.headers
            .insert(name.to_string(), StringMatch::Exact(value.to_string()));
        self.analysis.matches.push(rule);
        self
    }

    /// Sets `mirror` (and optionally `mirrorWeight`).
    pub fn mirror(mut self, weight: Option<u8>) -> Self {
        self.analysis.mirror = true;
        self.analysis.mirror_weight = weight;
        self
    }

    /// Sets `sessionAffinity`.
    pub fn session_affinity(mut self, cookie_name: &str, max_age: u64) -> Self {
        self.analysis.session_affinity = Some(SessionAffinity {
            cookie_name: cookie_name.into(),
            max_age: Some(max_age),
            primary_cookie_name: None,
        });
        self
    }

    /// Sets `skipAnalysis`.
    pub fn skip_analysis(mut self, on: bool) -> Self {
        self.skip_analysis = on;
        self
    }

    /// Sets `progressDeadlineSeconds`.
    pub fn progress_deadline(mut self, secs: u64) -> Self {
        self.progress_deadline_seconds = Some(secs);
        self
    }

    /// Replaces the weights with an explicit step list.
    pub fn steps(mut self, steps: Vec<Step>) -> Self {
        self.steps = Some(steps);
        self.analysis.step_weight = None;
        self.analysis.step_weights = None;
        self.analysis.max_weight = None;
        self
    }

    /// Adds a webhook of `kind` named `name` calling a loopback URL.
    pub fn webhook(mut self, name: &str, kind: WebhookType) -> Self {
        self.analysis.webhooks.push(Webhook {
            name: name.into(),
            kind,
            url: format!("http://127.0.0.1:8090/{name}"),
            ..Webhook::default()
        });
        self
    }

    /// Sets the explicit `strategy:`.
    pub fn explicit_strategy(mut self, s: Strategy) -> Self {
        self.strategy = Some(s);
        self
    }

    /// Wraps the spec in a document named `name` in namespace `test`.
    pub fn into_rollout(self, name: &str) -> Rollout {
        Rollout {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: name.into(),
                namespace: Some("test".into()),
            },
            spec: self,
        }
    }
}

impl Rollout {
    /// A valid rollout named `name` with [`RolloutSpec::test`] as its spec.
    pub fn test(name: &str) -> Self {
        RolloutSpec::test().into_rollout(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_call_lasts_every_attempt_and_the_backoff_between() {
        assert_eq!(
            super::webhook_call_budget(None, 0),
            super::DEFAULT_WEBHOOK_TIMEOUT
        );
        assert_eq!(
            super::webhook_call_budget(Some(std::time::Duration::from_secs(10)), 2),
            std::time::Duration::from_millis(10_000 + 200 + 10_000 + 400 + 10_000)
        );
        // The backoff stops doubling at its cap.
        let many = super::webhook_call_budget(Some(std::time::Duration::from_millis(1)), 10);
        assert_eq!(
            many,
            std::time::Duration::from_millis(11 + 200 + 400 + 800 + 1600 + 3200 + 5 * 5000)
        );
        assert_eq!(
            super::longest_webhook_call([
                (Some(std::time::Duration::from_secs(1)), 0),
                (Some(std::time::Duration::from_secs(600)), 0)
            ]),
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(super::longest_webhook_call([]), None);
    }

    #[test]
    fn test_builder_is_valid() {
        assert_eq!(Rollout::test("podinfo").validate(), Ok(()));
        assert_eq!(RolloutSpec::test().iterations(5).validate(), Ok(()));
        assert_eq!(
            RolloutSpec::test()
                .iterations(5)
                .match_header("x-canary", "insider")
                .validate(),
            Ok(())
        );
    }

    #[test]
    fn validate_reports_code_built_problems() {
        let mut spec = RolloutSpec::test().step_weight(0).max_weight(101);
        spec.analysis.interval = Some(HumanDuration::from_millis(0));
        spec.analysis.threshold = Some(0);
        let errs = spec.validate().err().unwrap_or_default();
        for p in [
            "spec.analysis.stepWeight",
            "spec.analysis.maxWeight",
            "spec.analysis.interval",
            "spec.analysis.threshold",
        ] {
            assert!(errs.has_path(p), "{p} missing in {errs}");
        }
    }

    #[test]
    fn json_round_trip() {
        let spec = RolloutSpec::test()
            .steps(vec![
                Step::SetWeight(5),
                Step::Pause(PauseStep {
                    duration: Some(HumanDuration::from_secs(300)),
                }),
                Step::Analysis(AnalysisStep::default()),
                Step::Approval(ApprovalStep {}),
                Step::SetMirror(MirrorStep { weight: 10 }),
            ])
            .into_rollout("podinfo");
        let json = serde_json::to_value(&spec).unwrap_or_default();
        assert_eq!(json["apiVersion"], "aviary.dev/v1alpha1");
        assert_eq!(json["spec"]["steps"][0]["setWeight"], 5);
        assert_eq!(json["spec"]["steps"][1]["pause"]["duration"], "5m");
        assert_eq!(json["spec"]["steps"][3]["approval"], serde_json::json!({}));
        assert_eq!(json["spec"]["analysis"]["interval"], "1m");
        let back: Rollout = serde_json::from_value(json).unwrap_or_else(|_| Rollout::test("x"));
        assert_eq!(back, spec);
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns1123_label("podinfo-v1"));
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }
}
