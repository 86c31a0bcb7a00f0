//! Which requests of an ingress a rollout's route takes: its host names (`service.hosts`) and
//! its path prefix (`service.pathPrefix`).
//!
//! One ingress carries many rollouts. Each rollout's split applies only to the requests its
//! [`RouteSelector`] selects; the data plane picks the most specific selector (a named host
//! before any host, then the longest path prefix). Two rollouts on one ingress may not hold the
//! same host and path: [`RouteSelector::conflict`] says which they share, and Apply refuses the
//! second one, naming the first.
//!
//! A rollout without hosts takes every host (a catch-all), and without a path prefix every
//! path (`/`), as a single rollout on an ingress always did.

use serde::{Deserialize, Serialize};

use crate::error::{Collector, field, index};
use crate::spec::RolloutSpec;

/// The path prefix of a rollout that names none: every path.
pub const DEFAULT_PATH_PREFIX: &str = "/";

/// The longest path prefix accepted; a prefix is compared on every request.
const MAX_PATH_PREFIX: usize = 1024;

/// The requests of an ingress a route applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSelector {
    /// Host names (lower case, no port; `*.example.com` matches its subdomains); empty = any
    /// host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The request path starts with this (a plain string prefix, always starting with `/`).
    pub path_prefix: String,
}

impl Default for RouteSelector {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            path_prefix: DEFAULT_PATH_PREFIX.to_owned(),
        }
    }
}

/// The host and path two selectors both hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The host both take (`*` for two catch-alls).
    pub host: String,
    /// The path prefix both take.
    pub path_prefix: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host {:?} path prefix {:?}", self.host, self.path_prefix)
    }
}

impl RouteSelector {
    /// The selector of `spec`: `service.hosts` (a lone `*` is any host, as in Istio) and
    /// `service.pathPrefix`, defaulted.
    pub fn of(spec: &RolloutSpec) -> Self {
        let Some(service) = &spec.service else {
            return Self::default();
        };
        let mut hosts: Vec<String> = service
            .hosts
            .iter()
            .filter(|h| h.as_str() != "*")
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if service.hosts.iter().any(|h| h == "*") {
            hosts.clear();
        }
        hosts.sort();
        hosts.dedup();
        Self {
            hosts,
            path_prefix: service
                .path_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_owned()),
        }
    }

    /// Whether this selector takes every host.
    pub fn any_host(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The host and path prefix this selector and `other` both take, if any: the same path
    /// prefix on a host both name, or on any host for two catch-alls. A named host beside a
    /// catch-all, or a longer prefix beside a shorter one, is no conflict: the more specific
    /// one is chosen first.
    pub fn conflict(&self, other: &RouteSelector) -> Option<Conflict> {
        if self.path_prefix != other.path_prefix {
            return None;
        }
        let host = if self.any_host() && other.any_host() {
            "*".to_owned()
        } else {
            self.hosts.iter().find(|h| other.hosts.contains(h))?.clone()
        };
        Some(Conflict {
            host,
            path_prefix: self.path_prefix.clone(),
        })
    }
}

/// Where a rollout's route would take requests another rollout already holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The ingress both route.
    pub ingress: String,
    /// What both would take.
    pub conflict: Conflict,
}

/// The first ingress, host and path prefix `spec` would take that `other` holds: both route
/// the ingress and their selectors [`conflict`](RouteSelector::conflict). A member cluster's
/// ingress is its own (`<cluster>/<ingress>`, served by that cluster's agents): it is shared
/// only with rollouts that name the same ingress in the same cluster, never with a hub ingress
/// of the same name.
pub fn taken(spec: &RolloutSpec, other: &RolloutSpec) -> Option<Taken> {
    let conflict = RouteSelector::of(spec).conflict(&RouteSelector::of(other))?;
    let theirs = routed(other);
    let ingress = routed(spec).into_iter().find(|i| theirs.contains(i))?;
    Some(Taken { ingress, conflict })
}

/// Every ingress `spec` routes, as status names it: a hub ingress by its name, a member
/// cluster's as `<cluster>/<ingress>`.
fn routed(spec: &RolloutSpec) -> Vec<String> {
    let hub = spec.ingresses.iter().map(|i| i.name.clone());
    let members = spec
        .clusters
        .iter()
        .flat_map(|c| c.ingress_names().map(move |i| format!("{}/{i}", c.name)));
    hub.chain(members).collect()
}

/// A host name a route may select: a DNS name of lower-case labels, optionally starting with
/// `*.` (its subdomains), without a port.
pub fn is_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| ok(c) || c == '-')
                && label.starts_with(ok)
                && label.ends_with(ok)
        })
}

/// A header name a match rule may test: lower-case letters, digits and `-`. The one rule for
/// header names: the spec's validation and the router agent both use it. It is narrower than
/// HTTP's token because every data plane must be able to name the header: NGINX reads one as
/// `$http_<name>` with `-` turned into `_`, so `_` would alias and most other token characters
/// cannot appear in a variable name at all.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A cookie name (or session-affinity cookie value) every data plane takes as it is: letters,
/// digits and `- _ . ~ ! * +`. The one rule for cookie tokens, used by the spec's validation and
/// the router agent. RFC 6265's token also allows `# $ % & ' ^ | ` ``; those are left out
/// because NGINX and HAProxy configurations give them meaning (variables, comments, quotes).
pub fn is_cookie_token(token: &str) -> bool {
    !token.is_empty()
        && token.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '!' | '*' | '+')
        })
}

/// Splits a backend endpoint, `host:port` or `[v6]:port`, into its host and a port other than
/// 0; `None` when it is not one. The host holds only letters, digits, `.`, `-`, `_` and (IPv6)
/// `:`. The one rule for an endpoint: the spec's validation and the router agent both use it, so
/// a spec that validates is never refused by an agent for its endpoints.
pub fn parse_endpoint(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    (valid_host && port != 0).then_some((host, port))
}

/// A path prefix a route may select: starts with `/`, and holds only characters of a URL path
/// (RFC 3986 `pchar` and `/`, less quotes and parentheses), so every data plane's
/// configuration can carry it unquoted.
pub fn is_path_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && prefix.len() <= MAX_PATH_PREFIX
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~!$&*+,=:@%".contains(c))
}

/// Checks `service.hosts` and `service.pathPrefix` under `path` (the `service` block).
pub(crate) fn check(hosts: &[String], path_prefix: Option<&str>, path: &str, c: &mut Collector) {
    let hp = field(path, "hosts");
    let mut seen = std::collections::BTreeSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let p = index(&hp, i);
        if host != "*" && !is_host(host) {
            c.push(
                &p,
                format!(
                    "{host:?} is not a host name (lower-case DNS labels, optionally starting \
                     with \"*.\", no port), nor \"*\""
                ),
            );
        } else if !seen.insert(host.as_str()) {
            c.push(&p, format!("duplicate host {host:?}"));
        }
    }
    if let Some(prefix) = path_prefix
        && !is_path_prefix(prefix)
    {
        c.push(
            &field(path, "pathPrefix"),
            format!(
                "{prefix:?} must start with '/' and hold only URL path characters (letters, \
                 digits and -._~!$&*+,=:@%/), at most {MAX_PATH_PREFIX} of them"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ServiceSpec;

    fn selector(hosts: &[&str], prefix: &str) -> RouteSelector {
        RouteSelector {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            path_prefix: prefix.to_owned(),
        }
    }

    #[test]
    fn parses_endpoints() {
        assert_eq!(parse_endpoint("127.0.0.1:9001"), Some(("127.0.0.1", 9001)));
        assert_eq!(parse_endpoint("[::1]:80"), Some(("::1", 80)));
        assert_eq!(parse_endpoint("svc_a.ns:8080"), Some(("svc_a.ns", 8080)));
        for bad in [
            "host",
            "host:0",
            ":80",
            "host:65536",
            "127+0.0.1:80",
            "[::1:80",
            "a b:80",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }

    #[test]
    fn two_catch_alls_conflict_on_any_host() {
        let conflict = RouteSelector::default().conflict(&RouteSelector::default());
        assert_eq!(
            conflict,
            Some(Conflict {
                host: "*".into(),
                path_prefix: "/".into()
            })
        );
    }

    #[test]
    fn a_shared_host_and_prefix_conflict_and_the_host_is_named() {
        let a = selector(&["a.example", "shared.example"], "/");
        let b = selector(&["shared.example"], "/");
        assert_eq!(
            a.conflict(&b).map(|c| c.host),
            Some("shared.example".into())
        );
        assert_eq!(
            b.conflict(&a).map(|c| c.host),
            Some("shared.example".into())
        );
    }

    #[test]
    fn distinct_hosts_prefixes_or_a_catch_all_beside_a_host_do_not_conflict() {
        let a = selector(&["a.example"], "/");
        assert_eq!(a.conflict(&selector(&["b.example"], "/")), None);
        assert_eq!(a.conflict(&selector(&["a.example"], "/api")), None);
        assert_eq!(a.conflict(&RouteSelector::default()), None);
        assert_eq!(
            selector(&[], "/api").conflict(&RouteSelector::default()),
            None
        );
    }

    #[test]
    fn the_selector_of_a_spec_defaults_and_normalises() {
        let mut spec = RolloutSpec::default();
        assert_eq!(RouteSelector::of(&spec), RouteSelector::default());
        spec.service = Some(ServiceSpec {
            hosts: vec!["b.example".into(), "a.example".into(), "a.example".into()],
            path_prefix: Some("/api".into()),
            ..ServiceSpec::default()
        });
        assert_eq!(
            RouteSelector::of(&spec),
            selector(&["a.example", "b.example"], "/api")
        );
        spec.service = Some(ServiceSpec {
            hosts: vec!["a.example".into(), "*".into()],
            ..ServiceSpec::default()
        });
        assert!(RouteSelector::of(&spec).any_host());
    }

    #[test]
    fn a_rollout_takes_only_what_another_holds_on_a_shared_ingress() {
        let mut a = RolloutSpec::test();
        let mut b = RolloutSpec::test();
        let taken_ = taken(&a, &b).expect("two catch-alls on edge");
        assert_eq!(taken_.ingress, "edge");
        assert_eq!(taken_.conflict.host, "*");
        b.ingresses[0].name = "other".into();
        assert_eq!(taken(&a, &b), None);
        b.ingresses[0].name = "edge".into();
        a.service = Some(ServiceSpec {
            hosts: vec!["a.example".into()],
            ..ServiceSpec::default()
        });
        assert_eq!(taken(&a, &b), None);
        b.service = a.service.clone();
        assert_eq!(
            taken(&a, &b).map(|t| t.conflict.host),
            Some("a.example".into())
        );
    }

    #[test]
    fn a_member_clusters_ingress_is_shared_only_within_that_cluster() {
        let eu = RolloutSpec::test().clusters(&[("eu", &["edge"]), ("us", &["lb"])]);
        let hub = RolloutSpec::test();
        // The hub's "edge" is not eu's "edge".
        assert_eq!(taken(&eu, &hub), None);
        assert_eq!(taken(&hub, &eu), None);
        let also_eu = RolloutSpec::test().clusters(&[("eu", &["edge"])]);
        assert_eq!(
            taken(&eu, &also_eu).map(|t| t.ingress),
            Some("eu/edge".into())
        );
        let us_edge = RolloutSpec::test().clusters(&[("us", &["edge"])]);
        assert_eq!(taken(&eu, &us_edge), None);
    }

    #[test]
    fn hosts_and_prefixes_are_checked() {
        assert!(is_host("a.example"));
        assert!(is_host("*.example.com"));
        assert!(is_host("podinfo"));
        assert!(!is_host("A.example"));
        assert!(!is_host("a.example:8080"));
        assert!(!is_host("a..example"));
        assert!(!is_host("*"));
        assert!(is_path_prefix("/"));
        assert!(is_path_prefix("/api/v1"));
        assert!(!is_path_prefix("api"));
        assert!(!is_path_prefix("/a b"));
        assert!(!is_path_prefix("/a;b"));
        assert!(!is_path_prefix("/a\"b"));
        assert!(!is_path_prefix("/a{b}"));
    }

    const ENDPOINT_MODE: &str = "apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: { name: podinfo, namespace: test }
spec:
  ingresses: [{ name: edge }]
  service: SERVICE
  primary: { name: podinfo-v1, endpoints: [\"127.0.0.1:9001\"] }
  canary: { name: podinfo-v2, endpoints: [\"127.0.0.1:9002\"] }
  analysis: { interval: 1m, threshold: 2, maxWeight: 50, stepWeight: 10 }
";

    fn paths(service: &str) -> Vec<String> {
        match crate::parse_rollout(&ENDPOINT_MODE.replace("SERVICE", service)) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors().iter().map(|e| e.path.clone()).collect(),
        }
    }

    #[test]
    fn an_endpoint_mode_rollout_selects_hosts_and_a_path_prefix() {
        let yaml = ENDPOINT_MODE.replace("SERVICE", "{ hosts: [a.example], pathPrefix: /api }");
        let rollout = crate::parse_rollout(&yaml).expect("valid");
        assert_eq!(
            RouteSelector::of(&rollout.spec),
            selector(&["a.example"], "/api")
        );
    }

    #[test]
    fn invalid_selection_is_refused_with_its_field_path() {
        assert_eq!(paths("{ hosts: [A.example] }"), ["spec.service.hosts[0]"]);
        assert_eq!(
            paths("{ hosts: [a.example, a.example] }"),
            ["spec.service.hosts[1]"]
        );
        assert_eq!(paths("{ pathPrefix: api }"), ["spec.service.pathPrefix"]);
        assert_eq!(
            paths("{ hosts: [a.example], port: 80 }"),
            ["spec.service.port"]
        );
    }
}
