//! The route a provider applies, validated out of the protobuf [`DesiredRoute`].
//!
//! Protobuf types stay at the edge: [`Route::try_from`] names the bad field, and every provider
//! works on [`Route`] only, so "weights sum to 100" or "an endpoint is `host:port`" is checked
//! once.
//!
//! One ingress serves many rollouts: a [`RouteSet`] holds each one's route by rollout, and each
//! route applies only to the requests its [`RouteSelector`] (hosts and path prefix) selects.

use std::collections::BTreeMap;

use aviary_core::route::{self, Conflict, RouteSelector};
use aviary_proto::naming::cluster_name;
use aviary_proto::{DesiredRoute, match_condition, string_match};

/// Every route an ingress serves, by rollout ([`Route::key`]).
pub type RouteSet = BTreeMap<String, Route>;

/// A validated split for one ingress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Namespace of the rollout; prefixes every cluster name.
    pub namespace: String,
    /// Name of the rollout.
    pub rollout: String,
    /// The ingress this route is for.
    pub ingress: String,
    /// The stable version.
    pub primary: Backend,
    /// The new version.
    pub canary: Backend,
    /// Percent of traffic to the primary.
    pub primary_weight: u32,
    /// Percent of traffic to the canary; `primary_weight + canary_weight == 100`.
    pub canary_weight: u32,
    /// Percent of requests copied to the canary (responses discarded); 0 = off.
    pub mirror_percent: u32,
    /// Any rule whose conditions all hold sends the request to the canary.
    pub matches: Vec<Vec<Condition>>,
    /// Session affinity for canary users.
    pub affinity: Option<Affinity>,
    /// The requests of the ingress this route takes.
    pub selector: RouteSelector,
}

/// A backend and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend name (e.g. `podinfo-v2`).
    pub name: String,
    /// Data-plane cluster name: `<namespace>_<name>`.
    pub cluster: String,
    /// Where it listens.
    pub endpoints: Vec<Endpoint>,
}

/// `host:port` of one backend instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IP address or host name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One condition of an A/B match rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition {
    /// What is inspected.
    pub kind: ConditionKind,
    /// Header name (lower case) or cookie name.
    pub name: String,
    /// How its value is matched.
    pub value: StringMatch,
}

/// What a condition inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionKind {
    /// A request header.
    Header,
    /// A cookie in the `cookie` header.
    Cookie,
}

/// How a value is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// RE2 regular expression over the whole value.
    Regex(String),
}

/// Session affinity: canary responses set a cookie; a request carrying it stays on the canary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Affinity {
    /// Cookie name.
    pub cookie_name: String,
    /// This run's cookie value.
    pub cookie_value: String,
    /// Cookie lifetime.
    pub max_age_seconds: u32,
    /// The run has ended: the cookie is expired and no longer pins.
    pub expired: bool,
    /// Primary stickiness: the primary's responses set this cookie (same value) for this
    /// long, and a request carrying it stays on the primary.
    pub primary: Option<(String, u32)>,
}

impl Affinity {
    /// The primary cookie's `Set-Cookie` value, while the run pins (not expired).
    pub fn primary_set_cookie(&self) -> Option<String> {
        let (name, max_age) = self.primary.as_ref().filter(|_| !self.expired)?;
        Some(format!(
            "{name}={}; Max-Age={max_age}; Path=/",
            self.cookie_value
        ))
    }

    /// The `Set-Cookie` value sent to clients.
    pub fn set_cookie(&self) -> String {
        if self.expired {
            format!(
                "{}={}; Max-Age=-1; Path=/",
                self.cookie_name, self.cookie_value
            )
        } else {
            format!(
                "{}={}; Max-Age={}; Path=/",
                self.cookie_name, self.cookie_value, self.max_age_seconds
            )
        }
    }
}

/// The split a data plane was observed serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// Percent to the primary.
    pub primary_weight: u32,
    /// Percent to the canary.
    pub canary_weight: u32,
    /// Percent mirrored to the canary.
    pub mirror_percent: u32,
}

impl Route {
    /// The rollout this route belongs to, `<namespace>/<name>`: its key in a [`RouteSet`].
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.rollout)
    }

    /// The first route of `routes` (other than this rollout's own) that holds a host and path
    /// prefix this route would take, with what both take.
    pub fn conflict<'a>(&self, routes: &'a RouteSet) -> Option<(&'a Route, Conflict)> {
        let key = self.key();
        routes
            .iter()
            .filter(|(k, _)| **k != key)
            .find_map(|(_, r)| self.selector.conflict(&r.selector).map(|c| (r, c)))
    }

    /// The split this route asks for, as it would be observed.
    pub fn expected(&self) -> Observed {
        Observed {
            primary_weight: self.primary_weight,
            canary_weight: self.canary_weight,
            mirror_percent: self.mirror_percent,
        }
    }

    /// Whether any A/B rule inspects a header.
    pub fn uses_header_match(&self) -> bool {
        self.conditions().any(|c| c.kind == ConditionKind::Header)
    }

    /// Whether any A/B rule inspects a cookie.
    pub fn uses_cookie_match(&self) -> bool {
        self.conditions().any(|c| c.kind == ConditionKind::Cookie)
    }

    fn conditions(&self) -> impl Iterator<Item = &Condition> {
        self.matches.iter().flatten()
    }
}

/// A `DesiredRoute` that cannot be applied; `field` is the protobuf field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidRoute {
    /// Field path, e.g. `route.canary.endpoints[0]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidRoute {
    InvalidRoute {
        field: field.into(),
        reason: reason.into(),
    }
}

impl TryFrom<&DesiredRoute> for Route {
    type Error = InvalidRoute;

    fn try_from(route: &DesiredRoute) -> Result<Self, InvalidRoute> {
        let rollout = route
            .rollout
            .as_ref()
            .ok_or_else(|| invalid("route.rollout", "missing"))?;
        if !is_label(&rollout.namespace) {
            return Err(invalid("route.rollout.namespace", "must be a DNS label"));
        }
        if route.ingress.is_empty() {
            return Err(invalid("route.ingress", "missing"));
        }
        let primary = backend("route.primary", &rollout.namespace, route.primary.as_ref())?;
        let canary = backend("route.canary", &rollout.namespace, route.canary.as_ref())?;
        if primary.cluster == canary.cluster {
            return Err(invalid(
                "route.canary.name",
                "must differ from the primary's",
            ));
        }
        if route.primary_weight.checked_add(route.canary_weight) != Some(100) {
            return Err(invalid(
                "route.canary_weight",
                format!(
                    "primary {} + canary {} must be 100",
                    route.primary_weight, route.canary_weight
                ),
            ));
        }
        if route.mirror_percent > 100 {
            return Err(invalid("route.mirror_percent", "must be at most 100"));
        }
        let mut matches = Vec::with_capacity(route.matches.len());
        for (i, rule) in route.matches.iter().enumerate() {
            if rule.conditions.is_empty() {
                return Err(invalid(format!("route.matches[{i}]"), "has no conditions"));
            }
            let mut conditions = Vec::with_capacity(rule.conditions.len());
            for (j, c) in rule.conditions.iter().enumerate() {
                conditions.push(condition(
                    &format!("route.matches[{i}].conditions[{j}]"),
                    c,
                )?);
            }
            matches.push(conditions);
        }
        let affinity = match &route.session_affinity {
            Some(a) if !a.cookie_name.is_empty() => {
                if !route::is_cookie_token(&a.cookie_name) {
                    return Err(invalid(
                        "route.session_affinity.cookie_name",
                        "must be a cookie token",
                    ));
                }
                if !route::is_cookie_token(&a.cookie_value) {
                    return Err(invalid(
                        "route.session_affinity.cookie_value",
                        "must be a non-empty cookie token",
                    ));
                }
                let primary = if a.primary_cookie_name.is_empty() {
                    None
                } else if !route::is_cookie_token(&a.primary_cookie_name)
                    || a.primary_cookie_name == a.cookie_name
                {
                    return Err(invalid(
                        "route.session_affinity.primary_cookie_name",
                        "must be a cookie token other than cookie_name",
                    ));
                } else {
                    Some((
                        a.primary_cookie_name.clone(),
                        a.primary_max_age_seconds.max(1),
                    ))
                };
                Some(Affinity {
                    cookie_name: a.cookie_name.clone(),
                    cookie_value: a.cookie_value.clone(),
                    max_age_seconds: a.max_age_seconds,
                    expired: a.expired,
                    primary,
                })
            }
            _ => None,
        };
        for (i, host) in route.hosts.iter().enumerate() {
            if !route::is_host(host) {
                return Err(invalid(
                    format!("route.hosts[{i}]"),
                    format!("{host:?} is not a lower-case host name without a port"),
                ));
            }
        }
        let path_prefix = if route.path_prefix.is_empty() {
            route::DEFAULT_PATH_PREFIX.to_owned()
        } else if route::is_path_prefix(&route.path_prefix) {
            route.path_prefix.clone()
        } else {
            return Err(invalid(
                "route.path_prefix",
                format!(
                    "{:?} must start with '/' and hold only URL path characters",
                    route.path_prefix
                ),
            ));
        };
        let mut hosts = route.hosts.clone();
        hosts.sort();
        hosts.dedup();
        Ok(Self {
            namespace: rollout.namespace.clone(),
            rollout: rollout.name.clone(),
            ingress: route.ingress.clone(),
            primary,
            canary,
            primary_weight: route.primary_weight,
            canary_weight: route.canary_weight,
            mirror_percent: route.mirror_percent,
            matches,
            affinity,
            selector: RouteSelector { hosts, path_prefix },
        })
    }
}

/// A stable fingerprint of every route of an ingress, used as a data-plane config version.
pub fn fingerprint(routes: &RouteSet) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable within a build, which is all a version needs.
    let mut hasher = std::hash::DefaultHasher::new();
    routes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// `route` as the only route of its ingress.
pub fn alone(route: &Route) -> RouteSet {
    RouteSet::from([(route.key(), route.clone())])
}

/// The routes of `routes` in the order a data plane must try them: a longer path prefix first,
/// then a route naming hosts before a catch-all, then by rollout (so the order is stable).
pub fn most_specific_first(routes: &RouteSet) -> Vec<&Route> {
    let mut ordered: Vec<&Route> = routes.values().collect();
    ordered.sort_by(|a, b| {
        b.selector
            .path_prefix
            .len()
            .cmp(&a.selector.path_prefix.len())
            .then(a.selector.any_host().cmp(&b.selector.any_host()))
            .then(a.key().cmp(&b.key()))
    });
    ordered
}

fn backend(
    field: &str,
    namespace: &str,
    backend: Option<&aviary_proto::Backend>,
) -> Result<Backend, InvalidRoute> {
    let backend = backend.ok_or_else(|| invalid(field, "missing"))?;
    if !is_label(&backend.name) {
        return Err(invalid(format!("{field}.name"), "must be a DNS label"));
    }
    if backend.endpoints.is_empty() {
        return Err(invalid(format!("{field}.endpoints"), "empty"));
    }
    let endpoints = backend
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            parse_endpoint(e).ok_or_else(|| {
                invalid(
                    format!("{field}.endpoints[{i}]"),
                    format!("{e:?} is not host:port"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Backend {
        name: backend.name.clone(),
        cluster: cluster_name(namespace, &backend.name),
        endpoints,
    })
}

/// Parses `host:port` or `[v6]:port` ([`route::parse_endpoint`], the rule the spec's
/// validation applies too).
pub fn parse_endpoint(text: &str) -> Option<Endpoint> {
    route::parse_endpoint(text).map(|(host, port)| Endpoint {
        host: host.to_owned(),
        port,
    })
}

fn condition(field: &str, c: &aviary_proto::MatchCondition) -> Result<Condition, InvalidRoute> {
    let kind = match c.kind() {
        match_condition::Kind::Header => ConditionKind::Header,
        match_condition::Kind::Cookie => ConditionKind::Cookie,
        match_condition::Kind::Unspecified => {
            return Err(invalid(format!("{field}.kind"), "unspecified"));
        }
    };
    let name_ok = match kind {
        ConditionKind::Header => route::is_header_name(&c.name),
        ConditionKind::Cookie => route::is_cookie_token(&c.name),
    };
    if !name_ok {
        return Err(invalid(
            format!("{field}.name"),
            format!(
                "{:?} is not a lower-case header name or cookie name",
                c.name
            ),
        ));
    }
    let value = match c.value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(string_match::Kind::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(string_match::Kind::Prefix(v)) => StringMatch::Prefix(v.clone()),
        Some(string_match::Kind::Suffix(v)) => StringMatch::Suffix(v.clone()),
        Some(string_match::Kind::Regex(v)) => StringMatch::Regex(v.clone()),
        None => return Err(invalid(format!("{field}.value"), "missing")),
    };
    Ok(Condition {
        kind,
        name: c.name.clone(),
        value,
    })
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use aviary_proto::{Backend as PBackend, MatchCondition, MatchRule, RolloutRef};

    pub(crate) fn desired(canary_weight: u32) -> DesiredRoute {
        DesiredRoute {
            rollout: Some(RolloutRef::new("test", "podinfo")),
            ingress: "edge".into(),
            primary: Some(PBackend {
                name: "podinfo-v1".into(),
                endpoints: vec!["127.0.0.1:9001".into()],
            }),
            canary: Some(PBackend {
                name: "podinfo-v2".into(),
                endpoints: vec!["127.0.0.1:9002".into()],
            }),
            primary_weight: 100 - canary_weight,
            canary_weight,
            ..Default::default()
        }
    }

    #[test]
    fn converts_and_names_clusters() {
        let route = Route::try_from(&desired(10)).unwrap();
        assert_eq!(route.primary.cluster, "test_podinfo-v1");
        assert_eq!(route.canary.endpoints[0].port, 9002);
        assert_eq!(route.expected().canary_weight, 10);
    }

    #[test]
    fn names_the_bad_field() {
        let mut d = desired(10);
        d.primary_weight = 50;
        assert_eq!(
            Route::try_from(&d).unwrap_err().field,
            "route.canary_weight"
        );
        let mut d = desired(10);
        d.canary.as_mut().unwrap().endpoints = vec!["nope".into()];
        assert_eq!(
            Route::try_from(&d).unwrap_err().field,
            "route.canary.endpoints[0]"
        );
        let mut d = desired(10);
        d.matches = vec![MatchRule {
            conditions: vec![MatchCondition {
                kind: match_condition::Kind::Header as i32,
                name: "X-Upper".into(),
                value: None,
            }],
        }];
        assert_eq!(
            Route::try_from(&d).unwrap_err().field,
            "route.matches[0].conditions[0].name"
        );
    }

    #[test]
    fn selects_hosts_and_a_path_prefix_and_names_bad_ones() {
        let route = Route::try_from(&desired(10)).unwrap();
        assert_eq!(route.selector, RouteSelector::default());
        let mut d = desired(10);
        d.hosts = vec!["b.example".into(), "a.example".into()];
        d.path_prefix = "/api".into();
        let route = Route::try_from(&d).unwrap();
        assert_eq!(route.selector.hosts, ["a.example", "b.example"]);
        assert_eq!(route.selector.path_prefix, "/api");
        d.hosts = vec!["a.example:80".into()];
        assert_eq!(Route::try_from(&d).unwrap_err().field, "route.hosts[0]");
        d.hosts.clear();
        d.path_prefix = "api".into();
        assert_eq!(Route::try_from(&d).unwrap_err().field, "route.path_prefix");
    }

    #[test]
    fn orders_the_most_specific_route_first_and_finds_conflicts() {
        let mut set = RouteSet::new();
        let mut add = |name: &str, hosts: &[&str], prefix: &str| {
            let mut d = desired(10);
            d.rollout = Some(RolloutRef::new("test", name));
            d.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
            d.path_prefix = prefix.into();
            let route = Route::try_from(&d).unwrap();
            set.insert(route.key(), route);
        };
        add("catch-all", &[], "/");
        add("a", &["a.example"], "/");
        add("api", &[], "/api");
        let order: Vec<&str> = most_specific_first(&set)
            .iter()
            .map(|r| r.rollout.as_str())
            .collect();
        assert_eq!(order, ["api", "a", "catch-all"]);
        let mut d = desired(10);
        d.rollout = Some(RolloutRef::new("test", "second"));
        let second = Route::try_from(&d).unwrap();
        let (holder, conflict) = second.conflict(&set).unwrap();
        assert_eq!(holder.rollout, "catch-all");
        assert_eq!(conflict.host, "*");
        let own = set["test/catch-all"].clone();
        assert!(
            own.conflict(&set).is_none(),
            "a route never conflicts with itself"
        );
    }

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            parse_endpoint("[::1]:80"),
            Some(Endpoint {
                host: "::1".into(),
                port: 80
            })
        );
        assert_eq!(parse_endpoint("host:0"), None);
        assert_eq!(parse_endpoint("host"), None);
    }
}
