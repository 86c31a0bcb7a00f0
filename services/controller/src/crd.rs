//! The custom resources the controller serves, generated from the Rust types.
//!
//! - `aviary.dev/v1alpha1` `Rollout`: the spec is core's [`RolloutSpec`] (the same document
//!   `aviary validate` reads), its schema derived from those types by schemars.
//! - `flagger.app/v1beta1` `Canary`, `MetricTemplate` and `AlertProvider`: Flagger's resources,
//!   accepted unchanged. Their CRDs here keep the spec open (`x-kubernetes-preserve-unknown-fields`)
//!   because the controller decodes it with core's Flagger decoder, which names every bad field
//!   in the resource's status and Events rather than having the API server refuse the whole
//!   object with a schema message.
//!
//! Both kinds share one status ([`ResourceStatus`]) in Flagger's vocabulary, so
//! `kubectl get canaries` and `kubectl get rollouts.aviary.dev` read the same.

use aviary_core::spec::RolloutSpec;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Group of Aviary's own resources.
pub const GROUP: &str = "aviary.dev";
/// Group of Flagger's resources.
pub const FLAGGER_GROUP: &str = "flagger.app";
/// Finalizer put on resources with `revertOnDeletion`.
pub const FINALIZER: &str = "aviary.dev/finalizer";

/// The spec of an `aviary.dev/v1alpha1` `Rollout` resource: exactly an Aviary rollout spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "aviary.dev",
    version = "v1alpha1",
    kind = "Rollout",
    plural = "rollouts",
    namespaced,
    status = "ResourceStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"FailedChecks","type":"integer","jsonPath":".status.failedChecks"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct RolloutResourceSpec {
    /// The rollout spec.
    #[serde(flatten)]
    pub spec: RolloutSpec,
}

/// A Flagger `Canary`, its spec kept as written (decoded by `aviary_core::flagger`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "Canary",
    plural = "canaries",
    namespaced,
    status = "ResourceStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"FailedChecks","type":"integer","jsonPath":".status.failedChecks"}"#,
    printcolumn = r#"{"name":"LastTransitionTime","type":"string","jsonPath":".status.lastTransitionTime"}"#
)]
pub struct CanarySpec {
    /// Flagger's Canary spec.
    #[serde(flatten)]
    #[schemars(schema_with = "open_object")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A Flagger `MetricTemplate`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "MetricTemplate",
    plural = "metrictemplates",
    namespaced
)]
pub struct MetricTemplateSpec {
    /// Flagger's MetricTemplate spec.
    #[serde(flatten)]
    #[schemars(schema_with = "open_object")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A Flagger `AlertProvider`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "AlertProvider",
    plural = "alertproviders",
    namespaced
)]
pub struct AlertProviderSpec {
    /// Flagger's AlertProvider spec.
    #[serde(flatten)]
    #[schemars(schema_with = "open_object")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Status of a `Rollout` or `Canary`, with Flagger's field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Initializing, Initialized, Waiting, Progressing, WaitingPromotion, Promoting,
    /// Finalising, Succeeded, Failed, Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Percent of traffic on the canary.
    #[serde(default)]
    pub canary_weight: u32,
    /// Failed checks in the current run.
    #[serde(default)]
    pub failed_checks: u32,
    /// Analyses passed in the current run (A/B testing and blue/green).
    #[serde(default)]
    pub iterations: u32,
    /// Revision (hash of the target's pod template and configs) last handed to the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_spec: Option<String>,
    /// Revision the primary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promoted_spec: Option<String>,
    /// When the phase last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The resource generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last transition, or why the resource cannot be acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `Promoted` condition, as Flagger's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Promoted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason (the phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// When the condition was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
}

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Aviary's CRDs (the chart's `crds/`).
pub fn aviary_crds() -> Vec<Crd> {
    vec![Rollout::crd()]
}

/// Flagger's CRDs, for clusters without Flagger (a chart option installs them).
pub fn flagger_crds() -> Vec<Crd> {
    vec![Canary::crd(), MetricTemplate::crd(), AlertProvider::crd()]
}

/// CRDs as one multi-document YAML text, as checked into the chart.
///
/// # Errors
/// Only if serialisation fails, which it does not for these types.
pub fn to_yaml(crds: &[Crd]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(crd)?);
    }
    Ok(out)
}
