//! Flagger `Canary` resources through core's Flagger decoder, with `templateRef`s resolved from
//! the cluster's `MetricTemplate`s.

use aviary_core::flagger::{self, MetricTemplate};
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::json;
use tracing::warn;

use crate::crd::FLAGGER_GROUP;
use crate::resource::Decoded;

fn metric_templates() -> ApiResource {
    ApiResource {
        group: FLAGGER_GROUP.into(),
        version: "v1beta1".into(),
        api_version: format!("{FLAGGER_GROUP}/v1beta1"),
        kind: "MetricTemplate".into(),
        plural: "metrictemplates".into(),
    }
}

/// Every `MetricTemplate` in the cluster (or in `namespace`, for a namespaced install),
/// decoded; none when the kind is not installed. A template that does not decode is left out
/// (a Canary naming it then reports it as not found).
pub async fn cluster_templates(client: &Client, namespace: Option<&str>) -> Vec<MetricTemplate> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &metric_templates()),
        None => Api::all_with(client.clone(), &metric_templates()),
    };
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(e)) if e.code == 404 => return Vec::new(),
        Err(error) => {
            warn!(%error, "MetricTemplates not listed");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for obj in list {
        let doc = json!({
            "apiVersion": flagger::API_VERSION,
            "kind": "MetricTemplate",
            "metadata": {"name": obj.name_any(), "namespace": obj.namespace().unwrap_or_else(|| "default".into())},
            "spec": obj.data.get("spec").cloned().unwrap_or_default(),
        });
        let Ok(text) = serde_yaml::to_string(&doc) else {
            continue;
        };
        match flagger::decode(&text) {
            Ok(decoded) => out.extend(decoded.templates),
            Err(errors) => {
                warn!(template = %obj.name_any(), %errors, "MetricTemplate does not decode")
            }
        }
    }
    out
}

/// Decodes a `Canary` document (YAML text) into an Aviary rollout with its warnings.
///
/// # Errors
/// Every problem, each as `<path>: <message>`.
pub fn decode_canary(text: &str, templates: &Vec<MetricTemplate>) -> Result<Decoded, Vec<String>> {
    let decoded = flagger::decode_with(text, templates)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let rollout = decoded
        .rollouts
        .into_iter()
        .next()
        .ok_or_else(|| vec!["document: not a Canary".to_owned()])?;
    Ok(Decoded {
        rollout,
        warnings: decoded.warnings.iter().map(ToString::to_string).collect(),
    })
}
