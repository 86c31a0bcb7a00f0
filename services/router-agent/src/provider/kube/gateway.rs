//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`).
//!
//! Rules, in this order:
//! - with session affinity during a run, a sticky rule: requests whose `Cookie` header holds
//!   this run's cookie (a regex) go to the canary only;
//! - when A/B rules exist, a rule whose `matches` (one per A/B rule, headers ANDed; cookies as a
//!   regex on the `Cookie` header) send traffic to the canary only;
//! - the split rule with weighted `backendRefs` and, when mirroring, a `RequestMirror` filter
//!   with `percent`. With session affinity during a run, the canary's backendRef carries a
//!   `ResponseHeaderModifier` filter adding `Set-Cookie: <name>=<value>; Max-Age=<maxAge>`, so
//!   a user the split sent to the canary stays there.
//!
//! Once the run has ended (the affinity is expired) there is no sticky rule, and the other rules
//! carry a rule-level `ResponseHeaderModifier` adding the cookie with `Max-Age=-1`, so every
//! client drops it, whichever backend answers.
//!
//! A rule without `matches` matches every path, and Gateway API prefers the rule with more
//! header matches among equal path matches: the sticky and A/B rules win over the split
//! whatever the order an implementation sorts them in.

use kube::api::ApiResource;
use serde_json::{Value, json};

use super::{
    KubeKind, KubeSettings, affinity_regex, cookie_regex, expiring, metadata, pinning,
    primary_regex, single_cookie, value_regex, weight,
};
use crate::model::{Affinity, ConditionKind, Observed, Route, StringMatch};
use crate::provider::{ApplyError, Capabilities};

/// Weights, header and cookie matches, mirroring with a percentage, session affinity.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: true,
    cookie_match: true,
    mirror: true,
    session_affinity: true,
    primary_affinity: true,
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

/// A filter adding `Set-Cookie: set_cookie` to the response.
fn set_cookie_filter(set_cookie: String) -> Value {
    json!({
        "type": "ResponseHeaderModifier",
        "responseHeaderModifier": {
            "add": [{ "name": "Set-Cookie", "value": set_cookie }],
        },
    })
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
    if let Some(affinity) = pinning(route) {
        rules.push(json!({
            "matches": [{ "headers": [{
                "name": "cookie",
                "type": "RegularExpression",
                "value": affinity_regex(affinity),
            }] }],
            "backendRefs": [backend_ref(canary, port, None)],
        }));
        if let Some((name, _)) = &affinity.primary {
            rules.push(json!({
                "matches": [{ "headers": [{
                    "name": "cookie",
                    "type": "RegularExpression",
                    "value": primary_regex(name, affinity),
                }] }],
                "backendRefs": [backend_ref(primary, port, None)],
            }));
        }
    }
    // Once the run has ended, every response expires the cookie.
    let expire: Vec<Value> = expiring(route)
        .map(|a| set_cookie_filter(a.set_cookie()))
        .into_iter()
        .collect();
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
        let mut rule = json!({
            "matches": matches,
            "backendRefs": [backend_ref(canary, port, None)],
        });
        if !expire.is_empty() {
            rule["filters"] = json!(expire);
        }
        rules.push(rule);
    }
    let mut canary_backend = backend_ref(canary, port, Some(route.canary_weight));
    if let Some(affinity) = pinning(route) {
        // Only the canary's responses hand out the cookie: it marks users the split sent there.
        canary_backend["filters"] = json!([set_cookie_filter(affinity.set_cookie())]);
    }
    let mut primary_backend = backend_ref(primary, port, Some(route.primary_weight));
    if let Some(cookie) = route
        .affinity
        .as_ref()
        .and_then(Affinity::primary_set_cookie)
    {
        primary_backend["filters"] = json!([set_cookie_filter(cookie)]);
    }
    let mut split = json!({
        "backendRefs": [primary_backend, canary_backend],
    });
    let mut filters = Vec::new();
    if route.mirror_percent > 0 {
        filters.push(json!({
            "type": "RequestMirror",
            "requestMirror": {
                "backendRef": backend_ref(canary, port, None),
                "percent": route.mirror_percent,
            },
        }));
    }
    filters.extend(expire);
    if !filters.is_empty() {
        split["filters"] = json!(filters);
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

/// The split of the rule whose backends are the primary and the canary (the sticky and A/B
/// rules send to the canary only, so they are never read as the split).
pub fn observe(settings: &KubeSettings, route: &Route, object: &Value) -> Option<Observed> {
    let (primary, canary) = (
        settings.primary_service(route),
        settings.canary_service(route),
    );
    let rules = object.pointer("/spec/rules")?.as_array()?;
    // The sticky rules send to one backend only (the canary's, or with primary stickiness the
    // primary's): the split is the rule naming both.
    let rule = rules.iter().find(|rule| {
        rule["backendRefs"].as_array().is_some_and(|b| {
            b.iter().any(|b| b["name"] == primary) && b.iter().any(|b| b["name"] == canary)
        })
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

/// Whether the stored `HTTPRoute` has a rule sending requests that carry the route's affinity
/// cookie to the canary only (false without affinity).
pub fn pins(settings: &KubeSettings, route: &Route, object: &Value) -> bool {
    let Some(affinity) = &route.affinity else {
        return false;
    };
    let canary = settings.canary_service(route);
    let regex = affinity_regex(affinity);
    let is_pin = |m: &Value| {
        m["headers"].as_array().is_some_and(|headers| {
            headers.len() == 1
                && headers[0]["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("cookie"))
                && headers[0]["type"] == "RegularExpression"
                && headers[0]["value"] == regex.as_str()
        })
    };
    let rules = object.pointer("/spec/rules").and_then(Value::as_array);
    rules.into_iter().flatten().any(|rule| {
        let to_canary = rule["backendRefs"]
            .as_array()
            .is_some_and(|b| !b.is_empty() && b.iter().all(|b| b["name"] == canary));
        to_canary
            && rule["matches"]
                .as_array()
                .is_some_and(|m| m.iter().any(is_pin))
    })
}
