//! The resources the controller acts on — Aviary `Rollout`s and Flagger `Canary`s — handled as
//! [`DynamicObject`]s: how to reach each kind, how one decodes into core's [`Rollout`], and how
//! its status and Events are written.
//!
//! A resource is decoded by the same code as `aviary validate` (core's decoder, or its Flagger
//! decoder for a `Canary`), so a bad field gets the same message and path on the command line,
//! in the resource's status and in its Events.

use std::fmt;

use aviary_core::spec::Rollout;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{FLAGGER_GROUP, GROUP, ResourceStatus};

/// Field manager of the controller's writes.
pub const FIELD_MANAGER: &str = "aviary-controller";

/// Which kind of resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `aviary.dev/v1alpha1` `Rollout`.
    Rollout,
    /// `flagger.app/v1beta1` `Canary`.
    Canary,
}

impl Kind {
    /// The API resource of the kind.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Rollout => ApiResource {
                group: GROUP.into(),
                version: "v1alpha1".into(),
                api_version: format!("{GROUP}/v1alpha1"),
                kind: "Rollout".into(),
                plural: "rollouts".into(),
            },
            Kind::Canary => ApiResource {
                group: FLAGGER_GROUP.into(),
                version: "v1beta1".into(),
                api_version: format!("{FLAGGER_GROUP}/v1beta1"),
                kind: "Canary".into(),
                plural: "canaries".into(),
            },
        }
    }

    /// The API of the kind in `namespace`.
    pub fn api(self, client: &Client, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), namespace, &self.api_resource())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Rollout => "Rollout",
            Kind::Canary => "Canary",
        })
    }
}

/// A resource's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl Key {
    /// The key of `obj` of `kind`.
    pub fn of(kind: Kind, obj: &DynamicObject) -> Self {
        Key {
            kind,
            namespace: obj.namespace().unwrap_or_else(|| "default".into()),
            name: obj.name_any(),
        }
    }
}

/// A decoded resource: the Aviary rollout it describes and the warnings for Flagger fields
/// that have no effect here.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The rollout, in workload mode.
    pub rollout: Rollout,
    /// `<path>: <message>` for each accepted field without effect.
    pub warnings: Vec<String>,
}

/// Decodes `obj` of `kind` into an Aviary rollout; a `Canary`'s `templateRef`s are resolved
/// from the cluster's `MetricTemplate`s.
///
/// # Errors
/// Every problem, each as `<path>: <message>` (the decoder's own wording).
pub async fn decode(
    client: &Client,
    namespace: Option<&str>,
    kind: Kind,
    obj: &DynamicObject,
) -> Result<Decoded, Vec<String>> {
    let text = document(kind, obj)?;
    match kind {
        Kind::Rollout => aviary_core::decode::parse_rollout(&text)
            .map(|rollout| Decoded {
                rollout,
                warnings: Vec::new(),
            })
            .map_err(|e| e.0.iter().map(ToString::to_string).collect()),
        Kind::Canary => {
            // Only a Canary with a templateRef needs the cluster's MetricTemplates listed.
            let refs_templates = obj
                .data
                .pointer("/spec/analysis/metrics")
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(|m| m.get("templateRef").is_some()));
            let templates = if refs_templates {
                crate::flagger::cluster_templates(client, namespace).await
            } else {
                Vec::new()
            };
            crate::flagger::decode_canary(&text, &templates)
        }
    }
}

/// `obj` as the YAML document the decoders read.
fn document(kind: Kind, obj: &DynamicObject) -> Result<String, Vec<String>> {
    let doc = json!({
        "apiVersion": kind.api_resource().api_version,
        "kind": kind.to_string(),
        "metadata": {
            "name": obj.name_any(),
            "namespace": obj.namespace().unwrap_or_else(|| "default".into()),
        },
        "spec": obj.data.get("spec").cloned().unwrap_or(Value::Null),
    });
    serde_yaml::to_string(&doc).map_err(|e| vec![format!("document: {e}")])
}

/// The status stored on `obj`, or the default when it has none (or one this build cannot
/// read, which is then rewritten).
pub fn status_of(obj: &DynamicObject) -> ResourceStatus {
    obj.data
        .get("status")
        .cloned()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default()
}

/// Merge-patches the status subresource with `status` (fields left `None` are untouched).
///
/// # Errors
/// The API refused the write.
pub async fn patch_status(client: &Client, key: &Key, status: Value) -> kube::Result<()> {
    key.kind
        .api(client, &key.namespace)
        .patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(|_| ())
}

/// An owner reference to `obj`, so what the controller creates for it is collected with it.
pub fn owner_reference(kind: Kind, obj: &DynamicObject) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: kind.api_resource().api_version,
        kind: kind.to_string(),
        name: obj.name_any(),
        uid: obj.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Records a Kubernetes Event on the resource (`Normal` or `Warning`), as `kubectl describe`
/// shows them.
///
/// # Errors
/// The API refused the write.
pub async fn record_event(
    client: &Client,
    key: &Key,
    uid: Option<String>,
    warning: bool,
    reason: &str,
    message: &str,
) -> kube::Result<()> {
    let now = jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", key.name)),
            namespace: Some(key.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(key.kind.api_resource().api_version),
            kind: Some(key.kind.to_string()),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid,
            ..ObjectReference::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(message.chars().take(1024).collect()),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        reporting_component: Some("aviary-controller".to_owned()),
        reporting_instance: Some("aviary-controller".to_owned()),
        action: Some(reason.to_owned()),
        source: Some(EventSource {
            component: Some("aviary-controller".to_owned()),
            host: None,
        }),
        ..Event::default()
    };
    Api::<Event>::namespaced(client.clone(), &key.namespace)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// Finds the resource named by a scheduler rollout `namespace/name`: a `Rollout` first, then
/// a `Canary` when Flagger's kinds are watched.
///
/// # Errors
/// The API failed (a missing resource is `Ok(None)`).
pub async fn find(
    client: &Client,
    kinds: &[Kind],
    namespace: &str,
    name: &str,
) -> kube::Result<Option<(Kind, DynamicObject)>> {
    for &kind in kinds {
        if let Some(obj) = kind.api(client, namespace).get_opt(name).await? {
            return Ok(Some((kind, obj)));
        }
    }
    Ok(None)
}
