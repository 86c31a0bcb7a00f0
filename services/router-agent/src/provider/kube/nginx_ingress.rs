//! NGINX-ingress canary annotations: the user's primary `Ingress` is cloned as
//! `<ingress>-canary`, pointing at the canary service, with
//! `nginx.ingress.kubernetes.io/canary: "true"` and the split as annotations
//! (`canary-weight`, `canary-by-header` + `canary-by-header-value`/`-pattern`,
//! `canary-by-cookie`). The primary `Ingress` is only read.
//!
//! ingress-nginx evaluates header, then cookie, then weight, so an A/B route is expressible
//! when it has at most one header rule and one cookie rule of one condition each, and the
//! cookie is matched by its value `always` (ingress-nginx's fixed convention).

use kube::api::ApiResource;
use serde_json::{Map, Value, json};

use super::{KubeKind, KubeSettings, metadata, unsupported, value_regex};
use crate::model::{ConditionKind, Observed, Route, StringMatch};
use crate::provider::{ApplyError, Capabilities};

/// Weights, one header and one cookie match; no mirroring percentage, no affinity cookie.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: true,
    cookie_match: true,
    mirror: false,
    session_affinity: false,
    primary_affinity: false,
};

const KIND: KubeKind = KubeKind::NginxIngress;

/// Prefix of ingress-nginx's annotations.
const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// `ingresses.networking.k8s.io/v1`.
pub fn resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::networking::v1::Ingress>(&())
}

/// Name of the canary clone of ingress `primary`.
pub fn canary_name(primary: &str) -> String {
    format!("{primary}-canary")
}

/// The canary annotations expressing `route`.
///
/// Errors: [`ApplyError::Unsupported`] for matches ingress-nginx cannot express.
pub fn annotations(route: &Route) -> Result<Map<String, Value>, ApplyError> {
    let mut annotations = Map::new();
    let mut put = |key: &str, value: String| {
        annotations.insert(format!("{PREFIX}{key}"), Value::String(value));
    };
    put("canary", "true".into());
    put("canary-weight", route.canary_weight.to_string());
    let (mut header, mut cookie) = (false, false);
    for rule in &route.matches {
        let [condition] = rule.as_slice() else {
            return Err(unsupported(KIND, "match rules of several conditions"));
        };
        match condition.kind {
            ConditionKind::Header if !header => {
                header = true;
                put("canary-by-header", condition.name.clone());
                match &condition.value {
                    StringMatch::Exact(v) => put("canary-by-header-value", v.clone()),
                    other => put("canary-by-header-pattern", value_regex(other)),
                }
            }
            ConditionKind::Cookie if !cookie => {
                if condition.value != StringMatch::Exact("always".into()) {
                    return Err(unsupported(
                        KIND,
                        "cookie matches other than `<name>: {exact: always}`",
                    ));
                }
                cookie = true;
                put("canary-by-cookie", condition.name.clone());
            }
            _ => return Err(unsupported(KIND, "more than one header or cookie rule")),
        }
    }
    Ok(annotations)
}

/// Points every backend of `spec` that names the primary service at the canary service.
fn retarget(value: &mut Value, primary: &str, canary: &str) {
    match value {
        Value::Object(map) => {
            if let Some(service) = map.get_mut("service")
                && service["name"] == primary
            {
                service["name"] = json!(canary);
            }
            for child in map.values_mut() {
                retarget(child, primary, canary);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| retarget(item, primary, canary)),
        _ => {}
    }
}

/// The canary `Ingress` for `route`, cloned from the stored `primary` ingress.
///
/// Errors: [`ApplyError::Unsupported`] for matches ingress-nginx cannot express;
/// [`ApplyError::Rejected`] when the primary ingress has no backend on the primary service.
pub fn render(
    settings: &KubeSettings,
    route: &Route,
    primary: &Value,
) -> Result<Value, ApplyError> {
    let (primary_service, canary_service) = (
        settings.primary_service(route),
        settings.canary_service(route),
    );
    let mut spec = primary.get("spec").cloned().unwrap_or_else(|| json!({}));
    let before = spec.clone();
    retarget(&mut spec, primary_service, canary_service);
    // Workload mode, as Flagger: the user's Ingress sends the apex name `<name>`, whose Service
    // selects the primary's pods, rather than `<name>-primary`.
    if spec == before
        && let Some(apex) = primary_service.strip_suffix("-primary")
    {
        retarget(&mut spec, apex, canary_service);
    }
    if spec == before {
        return Err(ApplyError::Rejected {
            provider: KIND.name().into(),
            detail: format!(
                "ingress {} has no backend on service {primary_service}",
                settings.route
            ),
        });
    }
    // The canary ingress must carry the primary's own ingress-nginx settings (rewrites,
    // timeouts), but never its canary settings or kubectl's bookkeeping.
    let mut all = Map::new();
    if let Some(Value::Object(existing)) = primary.pointer("/metadata/annotations") {
        for (key, value) in existing {
            let canary_key = key
                .strip_prefix(PREFIX)
                .is_some_and(|k| k.starts_with("canary"));
            if !canary_key && key != "kubectl.kubernetes.io/last-applied-configuration" {
                all.insert(key.clone(), value.clone());
            }
        }
    }
    all.extend(annotations(route)?);
    let mut metadata = metadata(&canary_name(&settings.route), &settings.namespace);
    metadata["annotations"] = Value::Object(all);
    Ok(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }))
}

/// The split the canary ingress's annotations express.
pub fn observe(object: &Value) -> Option<Observed> {
    let annotations = object.pointer("/metadata/annotations")?;
    if annotations[format!("{PREFIX}canary")] != "true" {
        return None;
    }
    let canary_weight: u32 = match annotations.get(format!("{PREFIX}canary-weight")) {
        None => 0,
        Some(w) => w.as_str()?.parse().ok()?,
    };
    let total: u32 = match annotations.get(format!("{PREFIX}canary-weight-total")) {
        None => 100,
        Some(t) => t.as_str()?.parse().ok()?,
    };
    if total == 0 || canary_weight > total {
        return None;
    }
    let canary_weight = canary_weight * 100 / total;
    Some(Observed {
        primary_weight: 100 - canary_weight,
        canary_weight,
        mirror_percent: 0,
    })
}
