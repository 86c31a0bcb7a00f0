//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`).
//!
//! One rule per route: when A/B rules exist, a first rule whose `matches` (one per A/B rule,
//! headers ANDed; cookies as a regex on the `Cookie` header) send traffic to the canary only;
//! then the split rule with weighted `backendRefs` and, when mirroring, a `RequestMirror`
//! filter with `percent`.

use kube::api::ApiResource;
use serde_json::{Value, json};

use super::{KubeKind, KubeSettings, cookie_regex, metadata, single_cookie, value_regex, weight};
use crate::model::{ConditionKind, Observed, Route, StringMatch};
use crate::provider::{ApplyError, Capabilities};

/// Weights, header and cookie matches, mirroring with a percentage; no affinity cookie.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: true,
    cookie_match: true,
    mirror: true,
    session_affinity: false,
};

const KIND: KubeKind = KubeKind::GatewayApi;

/// `httproutes.gateway.networking.k8s.io/v1`.
pub fn resource() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

fn backend_ref(service: &str, port: u16, weight: Option<u32>) -> Value {
    let mut backend = json!({ "name": service, "port": port });
    if let Some(weight) = weight {
        backend["weight"] = json!(weight);
    }
    backend
}

/// The `HTTPRoute` for `route`.
///
/// Errors: [`ApplyError::Unsupported`] without a `port` in the settings (Gateway API requires
/// one for Service backends), or for a rule with several cookie conditions.
pub fn render(settings: &KubeSettings, route: &Route) -> Result<Value, ApplyError> {
    let port = settings.port.ok_or_else(|| {
        super::unsupported(KIND, "Service backends without `port` in the settings")
    })?;
    let (primary, canary) = (
        settings.primary_service(route),
        settings.canary_service(route),
    );
    let mut rules = Vec::new();
    if !route.matches.is_empty() {
        let mut matches = Vec::new();
        for rule in &route.matches {
            let mut headers: Vec<Value> = rule
                .iter()
                .filter(|c| c.kind == ConditionKind::Header)
                .map(|c| match &c.value {
                    StringMatch::Exact(v) => {
                        json!({ "name": c.name, "type": "Exact", "value": v })
                    }
                    other => json!({
                        "name": c.name,
                        "type": "RegularExpression",
                        "value": value_regex(other),
                    }),
                })
                .collect();
            if let Some(cookie) = single_cookie(KIND, rule)? {
                headers.push(json!({
                    "name": "cookie",
                    "type": "RegularExpression",
                    "value": cookie_regex(&cookie.name, &cookie.value),
                }));
            }
            matches.push(json!({ "headers": headers }));
        }
        rules.push(json!({
            "matches": matches,
            "backendRefs": [backend_ref(canary, port, None)],
        }));
    }
    let mut split = json!({
        "backendRefs": [
            backend_ref(primary, port, Some(route.primary_weight)),
            backend_ref(canary, port, Some(route.canary_weight)),
        ],
    });
    if route.mirror_percent > 0 {
        split["filters"] = json!([{
            "type": "RequestMirror",
            "requestMirror": {
                "backendRef": backend_ref(canary, port, None),
                "percent": route.mirror_percent,
            },
        }]);
    }
    rules.push(split);
    let mut spec = json!({ "rules": rules });
    if !settings.parent_refs.is_empty() {
        spec["parentRefs"] = settings
            .parent_refs
            .iter()
            .map(|name| json!({ "name": name }))
            .collect();
    }
    if !settings.hosts.is_empty() {
        spec["hostnames"] = json!(settings.hosts);
    }
    Ok(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(&settings.route, &settings.namespace),
        "spec": spec,
    }))
}

/// The split of the rule whose backends are the primary and the canary.
pub fn observe(settings: &KubeSettings, route: &Route, object: &Value) -> Option<Observed> {
    let (primary, canary) = (
        settings.primary_service(route),
        settings.canary_service(route),
    );
    let rules = object.pointer("/spec/rules")?.as_array()?;
    let rule = rules.iter().find(|rule| {
        rule["backendRefs"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["name"] == primary))
    })?;
    let backends = rule["backendRefs"].as_array()?;
    // An omitted weight is 1 in Gateway API.
    let weight_of = |service: &str| {
        backends
            .iter()
            .find(|b| b["name"] == service)
            .map_or(Some(0), |b| weight(b.get("weight"), 1))
    };
    let mirror_percent = rule["filters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["type"] == "RequestMirror" && f["requestMirror"]["backendRef"]["name"] == canary
        })
        .map_or(Some(0), |f| {
            let mirror = &f["requestMirror"];
            if let Some(percent) = mirror.get("percent") {
                percent.as_u64().and_then(|p| u32::try_from(p).ok())
            } else if let Some(fraction) = mirror.get("fraction") {
                let numerator = fraction["numerator"].as_u64()?;
                let denominator = fraction["denominator"].as_u64().unwrap_or(100).max(1);
                u32::try_from(numerator * 100 / denominator).ok()
            } else {
                Some(100)
            }
        })?;
    Some(Observed {
        primary_weight: weight_of(primary)?,
        canary_weight: weight_of(canary)?,
        mirror_percent,
    })
}
