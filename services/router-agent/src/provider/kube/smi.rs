//! SMI `TrafficSplit` (`split.smi-spec.io/v1alpha2`, the version Linkerd's SMI extension
//! serves): the root service's traffic is split between the primary and canary services by
//! integer weights. It has no request matching and no mirroring.

use kube::api::ApiResource;
use serde_json::{Value, json};

use super::{KubeSettings, metadata, weight};
use crate::model::{Observed, Route};
use crate::provider::Capabilities;

/// Weights only: a `TrafficSplit` has no matches, mirroring or affinity.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: false,
    cookie_match: false,
    mirror: false,
    session_affinity: false,
    primary_affinity: false,
};

/// `trafficsplits.split.smi-spec.io/v1alpha2`.
pub fn resource() -> ApiResource {
    ApiResource {
        group: "split.smi-spec.io".into(),
        version: "v1alpha2".into(),
        api_version: "split.smi-spec.io/v1alpha2".into(),
        kind: "TrafficSplit".into(),
        plural: "trafficsplits".into(),
    }
}

/// The `TrafficSplit` for `route`.
pub fn render(settings: &KubeSettings, route: &Route) -> Value {
    let root = settings.root_service.as_deref().unwrap_or(&settings.route);
    json!({
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": metadata(&settings.route, &settings.namespace),
        "spec": {
            "service": root,
            "backends": [
                { "service": settings.primary_service(route), "weight": route.primary_weight },
                { "service": settings.canary_service(route), "weight": route.canary_weight },
            ],
        },
    })
}

/// The weights of the primary and canary backends.
pub fn observe(settings: &KubeSettings, route: &Route, object: &Value) -> Option<Observed> {
    let backends = object.pointer("/spec/backends")?.as_array()?;
    let weight_of = |service: &str| {
        backends
            .iter()
            .find(|b| b["service"] == service)
            .map_or(Some(0), |b| weight(b.get("weight"), 0))
    };
    Some(Observed {
        primary_weight: weight_of(settings.primary_service(route))?,
        canary_weight: weight_of(settings.canary_service(route))?,
        mirror_percent: 0,
    })
}
