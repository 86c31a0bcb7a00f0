//! Istio `VirtualService` (`networking.istio.io/v1`).
//!
//! `http` routes, evaluated in order:
//! - with session affinity during a run, `aviary-affinity`: requests whose `cookie` header holds
//!   this run's cookie (`headers: {cookie: {regex: ...}}`) go to the canary;
//! - when A/B rules exist, `aviary-match`, whose `match` entries (one per A/B rule; cookies as
//!   `headers: {cookie: {regex: ...}}`) go to the canary;
//! - `aviary-split` with weighted destinations and, when mirroring, `mirror` +
//!   `mirrorPercentage`. With session affinity during a run, the canary destination carries
//!   `headers.response.add` with `Set-Cookie: <name>=<value>; Max-Age=<maxAge>`, so a user the
//!   split sent to the canary stays there.
//!
//! Once the run has ended (the affinity is expired) there is no `aviary-affinity` route, and the
//! other routes carry a route-level `headers.response.add` with the cookie at `Max-Age=-1`, so
//! every client drops it, whichever destination answers.

use kube::api::ApiResource;
use serde_json::{Map, Value, json};

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

const KIND: KubeKind = KubeKind::Istio;

/// Name of the route carrying the weighted split.
pub const SPLIT_ROUTE: &str = "aviary-split";

/// Name of the route carrying the A/B matches.
pub const MATCH_ROUTE: &str = "aviary-match";

/// Name of the route pinning users holding the affinity cookie to the canary.
pub const AFFINITY_ROUTE: &str = "aviary-affinity";

/// Name of the route keeping users holding the primary cookie on the primary.
pub const PRIMARY_AFFINITY_ROUTE: &str = "aviary-affinity-primary";

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

/// `headers` adding `Set-Cookie: set_cookie` to the response.
fn set_cookie_headers(set_cookie: String) -> Value {
    json!({ "response": { "add": { "Set-Cookie": set_cookie } } })
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
    if let Some(affinity) = pinning(route) {
        http.push(json!({
            "name": AFFINITY_ROUTE,
            "match": [{ "headers": { "cookie": { "regex": affinity_regex(affinity) } } }],
            "route": [{ "destination": destination(canary, port), "weight": 100 }],
        }));
        if let Some((name, _)) = &affinity.primary {
            http.push(json!({
                "name": PRIMARY_AFFINITY_ROUTE,
                "match": [{ "headers": { "cookie": { "regex": primary_regex(name, affinity) } } }],
                "route": [{ "destination": destination(primary, port), "weight": 100 }],
            }));
        }
    }
    // Once the run has ended, every response expires the cookie.
    let expire = expiring(route).map(|a| set_cookie_headers(a.set_cookie()));
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
        let mut matched = json!({
            "name": MATCH_ROUTE,
            "match": matches,
            "route": [{ "destination": destination(canary, port), "weight": 100 }],
        });
        if let Some(expire) = &expire {
            matched["headers"] = expire.clone();
        }
        http.push(matched);
    }
    let mut canary_destination =
        json!({ "destination": destination(canary, port), "weight": route.canary_weight });
    if let Some(affinity) = pinning(route) {
        // Only the canary's responses hand out the cookie: it marks users the split sent there.
        canary_destination["headers"] = set_cookie_headers(affinity.set_cookie());
    }
    let mut primary_destination =
        json!({ "destination": destination(primary, port), "weight": route.primary_weight });
    if let Some(cookie) = route
        .affinity
        .as_ref()
        .and_then(Affinity::primary_set_cookie)
    {
        primary_destination["headers"] = set_cookie_headers(cookie);
    }
    let mut split = json!({
        "name": SPLIT_ROUTE,
        "route": [primary_destination, canary_destination],
    });
    if route.mirror_percent > 0 {
        split["mirror"] = destination(canary, port);
        split["mirrorPercentage"] = json!({ "value": f64::from(route.mirror_percent) });
    }
    if let Some(expire) = expire {
        split["headers"] = expire;
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

/// The split of the `aviary-split` route (found by name: the affinity and A/B routes are never
/// read as the split).
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

/// Whether the stored `VirtualService` has a route sending requests that carry the route's
/// affinity cookie to the canary only (false without affinity).
pub fn pins(settings: &KubeSettings, route: &Route, object: &Value) -> bool {
    let Some(affinity) = &route.affinity else {
        return false;
    };
    let canary = settings.canary_service(route);
    let regex = affinity_regex(affinity);
    let is_pin = |m: &Value| {
        m["headers"].as_object().is_some_and(|headers| {
            headers.len() == 1
                && headers
                    .get("cookie")
                    .is_some_and(|c| c["regex"] == regex.as_str())
        })
    };
    let http = object.pointer("/spec/http").and_then(Value::as_array);
    http.into_iter().flatten().any(|r| {
        let to_canary = r["route"]
            .as_array()
            .is_some_and(|d| !d.is_empty() && d.iter().all(|d| d["destination"]["host"] == canary));
        to_canary && r["match"].as_array().is_some_and(|m| m.iter().any(is_pin))
    })
}
