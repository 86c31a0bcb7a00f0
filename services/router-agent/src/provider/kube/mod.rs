//! Kubernetes router providers: the split is a Kubernetes object that a mesh or an ingress
//! controller turns into traffic — a Gateway API `HTTPRoute` ([`gateway`]), an Istio
//! `VirtualService` ([`istio`]), an SMI `TrafficSplit` ([`smi`]) or an NGINX-ingress canary
//! `Ingress` ([`nginx_ingress`]).
//!
//! apply: render the object Aviary owns from the [`Route`] → server-side apply (PATCH
//! `application/apply-patch+yaml`, `fieldManager=aviary`, `force=true`) → GET it back → read the
//! split from what the API server stored (and, with session affinity, check that the rule
//! pinning the cookie to the canary is there while the run lasts and gone once it has ended).
//! Server-side apply makes the object's fields ours: a field left out of the next apply (a match
//! rule that ended, a mirror turned off, an expired sticky rule) is removed by the API server,
//! and other managers' fields are left alone.
//!
//! The objects are handled as JSON ([`DynamicObject`]) with a hand-written [`ApiResource`] per
//! kind: the few fields Aviary writes do not need full generated types, and the `gateway-api`
//! crate would pull a second `kube`.

pub mod gateway;
pub mod istio;
pub mod nginx_ingress;
pub mod smi;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::{ApplyError, Capabilities};
use crate::model::{Affinity, Condition, Observed, Route, StringMatch};

/// Field manager of every server-side apply: the owner of the fields Aviary writes.
pub const FIELD_MANAGER: &str = "aviary";

/// Label put on every object Aviary applies.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "aviary");

/// Which Kubernetes object carries the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeKind {
    /// Gateway API `HTTPRoute`.
    GatewayApi,
    /// Istio `VirtualService`.
    Istio,
    /// SMI `TrafficSplit`.
    Smi,
    /// NGINX-ingress canary annotations on a cloned `Ingress`.
    NginxIngress,
}

impl KubeKind {
    /// The provider name, as in the ingress file.
    pub fn name(self) -> &'static str {
        match self {
            Self::GatewayApi => "gateway-api",
            Self::Istio => "istio",
            Self::Smi => "smi",
            Self::NginxIngress => "nginx-ingress",
        }
    }

    /// What this kind of object can express.
    pub fn capabilities(self) -> Capabilities {
        match self {
            Self::GatewayApi => gateway::CAPABILITIES,
            Self::Istio => istio::CAPABILITIES,
            Self::Smi => smi::CAPABILITIES,
            Self::NginxIngress => nginx_ingress::CAPABILITIES,
        }
    }

    /// The API resource of the object Aviary applies.
    pub fn resource(self) -> ApiResource {
        match self {
            Self::GatewayApi => gateway::resource(),
            Self::Istio => istio::resource(),
            Self::Smi => smi::resource(),
            Self::NginxIngress => nginx_ingress::resource(),
        }
    }
}

/// Settings of a Kubernetes ingress in the agent's config file (any of the four providers).
///
/// ```yaml
/// - name: web
///   provider: gateway-api        # or istio, smi, nginx-ingress
///   namespace: test
///   route: podinfo               # the HTTPRoute / VirtualService / TrafficSplit, or the
///                                # primary Ingress that nginx-ingress clones
///   primary_service: podinfo-primary
///   canary_service: podinfo-canary
///   port: 9898
///   parent_refs: [public-gw]     # gateway-api
///   hosts: [podinfo.example.com] # gateway-api hostnames, istio hosts
///   gateways: [mesh]             # istio
///   root_service: podinfo        # smi
///   kubeconfig: /etc/aviary/kubeconfig   # else in-cluster or the usual inference
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSettings {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object Aviary applies (for `nginx-ingress`: the primary `Ingress`, cloned
    /// as `<route>-canary`).
    pub route: String,
    /// Service of the primary (default: the rollout's primary name).
    #[serde(default)]
    pub primary_service: Option<String>,
    /// Service of the canary (default: the rollout's canary name).
    #[serde(default)]
    pub canary_service: Option<String>,
    /// Service port (Gateway API requires one; Istio uses it when set).
    #[serde(default)]
    pub port: Option<u16>,
    /// Gateway API: the Gateways the `HTTPRoute` attaches to.
    #[serde(default)]
    pub parent_refs: Vec<String>,
    /// Gateway API hostnames, Istio hosts (default for Istio: the primary service).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Istio gateways (none: the mesh).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// SMI: the root service clients call (default: `route`).
    #[serde(default)]
    pub root_service: Option<String>,
    /// Kubeconfig file; without it, in-cluster configuration or the usual inference.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[serde(default)]
    pub context: Option<String>,
}

impl KubeSettings {
    /// The primary's service name for `route`.
    pub fn primary_service<'a>(&'a self, route: &'a Route) -> &'a str {
        self.primary_service
            .as_deref()
            .unwrap_or(&route.primary.name)
    }

    /// The canary's service name for `route`.
    pub fn canary_service<'a>(&'a self, route: &'a Route) -> &'a str {
        self.canary_service.as_deref().unwrap_or(&route.canary.name)
    }
}

/// Drives one ingress whose split is a Kubernetes object.
pub struct KubeProvider {
    kind: KubeKind,
    settings: KubeSettings,
    client: kube::Client,
    timeout: Duration,
}

impl KubeProvider {
    /// A provider talking through `client` (a real API server or a mock); each request may
    /// take up to `timeout`.
    pub fn new(
        kind: KubeKind,
        settings: KubeSettings,
        client: kube::Client,
        timeout: Duration,
    ) -> Self {
        Self {
            kind,
            settings,
            client,
            timeout,
        }
    }

    /// A provider with a client from `settings.kubeconfig`, else in-cluster or inferred
    /// configuration. No request is made yet.
    ///
    /// Errors: [`ApplyError::Io`] when no usable configuration is found.
    pub async fn connect(
        kind: KubeKind,
        settings: KubeSettings,
        timeout: Duration,
    ) -> Result<Self, ApplyError> {
        let client =
            super::kube_client(settings.kubeconfig.as_deref(), settings.context.as_deref())
                .await
                .map_err(|e| io(kind, format!("kubernetes configuration: {e}")))?;
        Ok(Self::new(kind, settings, client, timeout))
    }

    /// Which object this provider applies.
    pub fn kind(&self) -> KubeKind {
        self.kind
    }

    fn api(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.settings.namespace, resource)
    }

    /// Runs one API call under the timeout, mapping errors to [`ApplyError`].
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApplyError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 422 || status.code == 400 => {
                Err(ApplyError::Rejected {
                    provider: self.kind.name().into(),
                    detail: format!("{what}: {}", status.message),
                })
            }
            Ok(Err(e)) => Err(io(self.kind, format!("{what}: {e}"))),
            Err(_) => Err(ApplyError::Unconfirmed {
                provider: self.kind.name().into(),
                after: self.timeout,
                detail: format!("{what}: no answer from the API server"),
            }),
        }
    }

    async fn get(&self, resource: &ApiResource, name: &str) -> Result<Value, ApplyError> {
        let object = self
            .call(
                &format!("get {} {name}", resource.kind),
                self.api(resource).get(name),
            )
            .await?;
        serde_json::to_value(object).map_err(|e| io(self.kind, e.to_string()))
    }

    /// The object (name, JSON) that expresses `route`.
    async fn render(&self, route: &Route) -> Result<(String, Value), ApplyError> {
        let s = &self.settings;
        Ok(match self.kind {
            KubeKind::GatewayApi => (s.route.clone(), gateway::render(s, route)?),
            KubeKind::Istio => (s.route.clone(), istio::render(s, route)?),
            KubeKind::Smi => (s.route.clone(), smi::render(s, route)),
            KubeKind::NginxIngress => {
                // Refuse what the annotations cannot say before reading anything.
                nginx_ingress::annotations(route)?;
                let primary = self.get(&nginx_ingress::resource(), &s.route).await?;
                (
                    nginx_ingress::canary_name(&s.route),
                    nginx_ingress::render(s, route, &primary)?,
                )
            }
        })
    }

    /// The split the stored object expresses.
    fn observe(&self, route: &Route, object: &Value) -> Result<Observed, ApplyError> {
        let s = &self.settings;
        let observed = match self.kind {
            KubeKind::GatewayApi => gateway::observe(s, route, object),
            KubeKind::Istio => istio::observe(s, route, object),
            KubeKind::Smi => smi::observe(s, route, object),
            KubeKind::NginxIngress => nginx_ingress::observe(object),
        };
        observed.ok_or_else(|| ApplyError::Rejected {
            provider: self.kind.name().into(),
            detail: format!("the stored {} carries no split", self.kind.resource().kind),
        })
    }

    /// Whether the stored object sends requests carrying the route's affinity cookie to the
    /// canary; `None` for kinds that cannot pin.
    fn pins(&self, route: &Route, object: &Value) -> Option<bool> {
        let s = &self.settings;
        match self.kind {
            KubeKind::GatewayApi => Some(gateway::pins(s, route, object)),
            KubeKind::Istio => Some(istio::pins(s, route, object)),
            KubeKind::Smi | KubeKind::NginxIngress => None,
        }
    }

    /// Server-side applies the object for `route`, reads it back and returns the split it
    /// carries.
    ///
    /// Errors: [`ApplyError::Unsupported`] when the route needs what this object cannot say;
    /// [`ApplyError::Rejected`] when the API server refuses the object, stores a different
    /// split, or drops (or keeps, once expired) the rule pinning the affinity cookie to the
    /// canary; [`ApplyError::Io`] / [`ApplyError::Unconfirmed`] for transport failures.
    pub async fn apply(&self, route: &Route) -> Result<Observed, ApplyError> {
        let resource = self.kind.resource();
        let (name, object) = self.render(route).await?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.call(
            &format!("apply {} {name}", resource.kind),
            self.api(&resource)
                .patch(&name, &params, &Patch::Apply(&object)),
        )
        .await?;
        let stored = self.get(&resource, &name).await?;
        let observed = self.observe(route, &stored)?;
        if observed != route.expected() {
            return Err(ApplyError::Rejected {
                provider: self.kind.name().into(),
                detail: format!(
                    "{} {name} read back as {}/{} mirror {}, want {}/{} mirror {}",
                    resource.kind,
                    observed.primary_weight,
                    observed.canary_weight,
                    observed.mirror_percent,
                    route.primary_weight,
                    route.canary_weight,
                    route.mirror_percent
                ),
            });
        }
        if let Some(affinity) = &route.affinity
            && let Some(pinned) = self.pins(route, &stored)
            && pinned == affinity.expired
        {
            let state = if affinity.expired {
                "still pins"
            } else {
                "does not pin"
            };
            return Err(ApplyError::Rejected {
                provider: self.kind.name().into(),
                detail: format!(
                    "{} {name} read back {state} cookie {} to the canary",
                    resource.kind, affinity.cookie_name
                ),
            });
        }
        Ok(observed)
    }

    /// Whether the stored object still carries every field Aviary would apply for `route`.
    pub async fn in_sync(&self, route: &Route) -> bool {
        let Ok((name, desired)) = self.render(route).await else {
            return false;
        };
        match self.get(&self.kind.resource(), &name).await {
            Ok(stored) => contains(&stored, &desired),
            Err(_) => false,
        }
    }
}

/// Whether `live` holds every field of `desired` with the same value (the API server may add
/// defaulted fields; lists must match element by element).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| contains(lv, dv))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (Value::Number(l), Value::Number(d)) => l.as_f64() == d.as_f64(),
        _ => live == desired,
    }
}

/// `metadata` of an object Aviary applies.
fn metadata(name: &str, namespace: &str) -> Value {
    serde_json::json!({
        "name": name,
        "namespace": namespace,
        "labels": { MANAGED_BY.0: MANAGED_BY.1 },
    })
}

fn io(kind: KubeKind, detail: String) -> ApplyError {
    ApplyError::Io {
        provider: kind.name().into(),
        detail,
    }
}

fn unsupported(kind: KubeKind, feature: &'static str) -> ApplyError {
    ApplyError::Unsupported {
        provider: kind.name().into(),
        feature,
    }
}

/// A regular expression matching a whole value as `m` does.
fn value_regex(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => format!("^{}$", regex::escape(v)),
        StringMatch::Prefix(v) => format!("^{}.*", regex::escape(v)),
        StringMatch::Suffix(v) => format!(".*{}$", regex::escape(v)),
        StringMatch::Regex(v) => v.clone(),
    }
}

/// A regular expression over the whole `Cookie` header holding cookie `name` whose value
/// matches as `m` does.
fn cookie_regex(name: &str, m: &StringMatch) -> String {
    let value = match m {
        StringMatch::Exact(v) => regex::escape(v),
        StringMatch::Prefix(v) => format!("{}[^;]*", regex::escape(v)),
        StringMatch::Suffix(v) => format!("[^;]*{}", regex::escape(v)),
        StringMatch::Regex(v) => {
            let v = v.strip_prefix('^').unwrap_or(v);
            let v = v.strip_suffix('$').unwrap_or(v);
            format!("(?:{v})")
        }
    };
    format!("^(.*?;\\s*)?{}={value}(;.*)?$", regex::escape(name))
}

/// The route's affinity while it pins users to the canary (not yet expired).
fn pinning(route: &Route) -> Option<&Affinity> {
    route.affinity.as_ref().filter(|a| !a.expired)
}

/// The route's affinity once the run has ended and its cookie is to be expired.
fn expiring(route: &Route) -> Option<&Affinity> {
    route.affinity.as_ref().filter(|a| a.expired)
}

/// A regular expression over the whole `Cookie` header holding this run's affinity cookie.
fn affinity_regex(affinity: &Affinity) -> String {
    cookie_regex(
        &affinity.cookie_name,
        &StringMatch::Exact(affinity.cookie_value.clone()),
    )
}

/// A regular expression over the whole `Cookie` header holding this run's primary cookie
/// `name` (primary stickiness).
fn primary_regex(name: &str, affinity: &Affinity) -> String {
    cookie_regex(name, &StringMatch::Exact(affinity.cookie_value.clone()))
}

/// The cookie condition of an A/B rule, if any; more than one cannot be expressed as one
/// match on the `Cookie` header.
fn single_cookie(kind: KubeKind, rule: &[Condition]) -> Result<Option<&Condition>, ApplyError> {
    let mut cookies = rule
        .iter()
        .filter(|c| c.kind == crate::model::ConditionKind::Cookie);
    let first = cookies.next();
    if cookies.next().is_some() {
        return Err(unsupported(
            kind,
            "several cookie conditions in one match rule",
        ));
    }
    Ok(first)
}

/// A weight read from JSON.
fn weight(value: Option<&Value>, default: u32) -> Option<u32> {
    match value {
        None | Some(Value::Null) => Some(default),
        Some(v) => v.as_u64().and_then(|w| u32::try_from(w).ok()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contains_ignores_defaulted_fields() {
        let live = json!({"spec": {"rules": [{"backendRefs": [{"name": "a", "weight": 90, "kind": "Service"}],
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]}});
        let desired = json!({"spec": {"rules": [{"backendRefs": [{"name": "a", "weight": 90}]}]}});
        assert!(contains(&live, &desired));
        let drifted = json!({"spec": {"rules": [{"backendRefs": [{"name": "a", "weight": 80}]}]}});
        assert!(!contains(&live, &drifted));
    }

    #[test]
    fn cookie_regex_matches_the_cookie_only() {
        let re = regex::Regex::new(&cookie_regex(
            "canary",
            &StringMatch::Exact("always".into()),
        ))
        .unwrap();
        assert!(re.is_match("canary=always"));
        assert!(re.is_match("a=b; canary=always; c=d"));
        assert!(!re.is_match("xcanary=always"));
        assert!(!re.is_match("canary=alwaysnot"));
    }
}
