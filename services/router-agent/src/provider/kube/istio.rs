//! Istio `VirtualService` (`networking.istio.io/v1`).
//!
//! `http` routes: when A/B rules exist, a first route `aviary-match` whose `match` entries (one
//! per A/B rule; cookies as `headers: {cookie: {regex: ...}}`) go to the canary; then
//! `aviary-split` with weighted destinations and, when mirroring, `mirror` +
//! `mirrorPercentage`.

use kube::api::ApiResource;
use serde_json::{Map, Value, json};

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

const KIND: KubeKind = KubeKind::Istio;

/// Name of the route carrying the weighted split.
pub const SPLIT_ROUTE: &str = "aviary-split";

/// Name of the route carrying the A/B matches.
pub const MATCH_ROUTE: &str = "aviary-match";

/// `virtualservices.networking.istio.io/v1`.
pub fn resource() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

fn destination(service: &str, port: Option<u16>) -> Value {
    let mut destination = json!({ "host": service });
    if let Some(port) = port {
        destination["port"] = json!({ "number": port });
    }
    destination
}

fn string_match(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(v) => json!({ "exact": v }),
        StringMatch::Prefix(v) => json!({ "prefix": v }),
        StringMatch::Regex(v) => json!({ "regex": v }),
        suffix @ StringMatch::Suffix(_) => json!({ "regex": value_regex(suffix) }),
    }
}

/// The `VirtualService` for `route`.
///
/// Errors: [`ApplyError::Unsupported`] for a rule with several cookie conditions (one
/// `cookie` header match per rule).
pub fn render(settings: &KubeSettings, route: &Route) -> Result<Value, ApplyError> {
    let (primary, canary) = (
        settings.primary_service(route),
        settings.canary_service(route),
    );
    let port = settings.port;
    let mut http = Vec::new();
    if !route.matches.is_empty() {
        let mut matches = Vec::new();
        for rule in &route.matches {
            let mut headers = Map::new();
            for c in rule.iter().filter(|c| c.kind == ConditionKind::Header) {
                headers.insert(c.name.clone(), string_match(&c.value));
            }
            if let Some(cookie) = single_cookie(KIND, rule)? {
                headers.insert(
                    "cookie".into(),
                    json!({ "regex": cookie_regex(&cookie.name, &cookie.value) }),
                );
            }
            matches.push(json!({ "headers": headers }));
        }
        http.push(json!({
            "name": MATCH_ROUTE,
            "match": matches,
            "route": [{ "destination": destination(canary, port), "weight": 100 }],
        }));
    }
    let mut split = json!({
        "name": SPLIT_ROUTE,
        "route": [
            { "destination": destination(primary, port), "weight": route.primary_weight },
            { "destination": destination(canary, port), "weight": route.canary_weight },
        ],
    });
    if route.mirror_percent > 0 {
        split["mirror"] = destination(canary, port);
        split["mirrorPercentage"] = json!({ "value": f64::from(route.mirror_percent) });
    }
    http.push(split);
    let hosts = if settings.hosts.is_empty() {
        vec![primary.to_owned()]
    } else {
        settings.hosts.clone()
    };
    let mut spec = json!({ "hosts": hosts, "http": http });
    if !settings.gateways.is_empty() {
        spec["gateways"] = json!(settings.gateways);
    }
    Ok(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(&settings.route, &settings.namespace),
        "spec": spec,
    }))
}

/// The split of the `aviary-split` route.
pub fn observe(settings: &KubeSettings, route: &Route, object: &Value) -> Option<Observed> {
    let (primary, canary) = (
        settings.primary_service(route),
        settings.canary_service(route),
    );
    let split = object
        .pointer("/spec/http")?
        .as_array()?
        .iter()
        .find(|r| r["name"] == SPLIT_ROUTE)?;
    let destinations = split["route"].as_array()?;
    let weight_of = |service: &str| {
        destinations
            .iter()
            .find(|d| d["destination"]["host"] == service)
            .map_or(Some(0), |d| weight(d.get("weight"), 0))
    };
    let mirror_percent = if split["mirror"]["host"] == canary {
        match split.pointer("/mirrorPercentage/value") {
            // Istio mirrors everything when the percentage is not set.
            None => 100,
            Some(v) => v.as_f64().map(|p| p.round() as u32)?,
        }
    } else {
        0
    };
    let (mut primary_weight, canary_weight) = (weight_of(primary)?, weight_of(canary)?);
    if destinations.len() == 1 && canary_weight == 0 && primary_weight == 0 {
        // A single destination without a weight takes all the traffic.
        primary_weight = 100;
    }
    Some(Observed {
        primary_weight,
        canary_weight,
        mirror_percent,
    })
}
