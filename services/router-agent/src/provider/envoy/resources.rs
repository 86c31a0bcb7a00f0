//! Pure translation of the routes of an ingress ([`RouteSet`]) into Envoy xDS resources: one
//! cluster per backend (CDS) and one `RouteConfiguration` for the ingress (RDS).
//!
//! Virtual hosts: one per host name a route names, and `*` for the routes that take any host.
//! A host's virtual host holds the routes that take it: those naming it, those naming a
//! wildcard (`*.example.com`) that covers it, then the catch-alls, a longer path prefix before a
//! shorter one (Envoy picks the virtual host by the most specific domain, then the first route
//! that matches). Within one rollout: affinity pin → A/B matches → weighted default, so a
//! pinned or matched request always reaches the canary.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, SocketAddress, address,
    header_value_option, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route as EnvoyRoute, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::{Message, Name};

use crate::model::{Affinity, Backend, Condition, ConditionKind, Route, RouteSet, StringMatch};

/// How long Envoy waits for a TCP connection to a backend; backends are local or in-cluster.
const CONNECT_TIMEOUT_SECONDS: i64 = 2;

/// The type URL of CDS resources.
pub fn cluster_type_url() -> String {
    Cluster::type_url()
}

/// The type URL of RDS resources.
pub fn route_type_url() -> String {
    RouteConfiguration::type_url()
}

/// A STATIC cluster (STRICT_DNS when an endpoint is a host name) named by `cluster_name`.
pub fn cluster(backend: &Backend) -> Cluster {
    let all_ips = backend
        .endpoints
        .iter()
        .all(|e| e.host.parse::<std::net::IpAddr>().is_ok());
    let discovery = if all_ips {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    let lb_endpoints = backend
        .endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: e.host.clone(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            e.port,
                        ))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    Cluster {
        name: backend.cluster.clone(),
        connect_timeout: Some(PbDuration {
            seconds: CONNECT_TIMEOUT_SECONDS,
            nanos: 0,
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: backend.cluster.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The route configuration `name` serving `routes` (an empty one, answering 404, without any).
pub fn route_configuration(name: &str, routes: &RouteSet) -> RouteConfiguration {
    let named: std::collections::BTreeSet<&str> = routes
        .values()
        .flat_map(|r| r.selector.hosts.iter().map(String::as_str))
        .collect();
    let mut virtual_hosts: Vec<VirtualHost> = named
        .into_iter()
        .map(|host| {
            // A Host header may carry a port; a wildcard domain cannot take a second wildcard.
            let mut domains = vec![host.to_owned()];
            if !host.starts_with("*.") {
                domains.push(format!("{host}:*"));
            }
            virtual_host(host, domains, routes, Some(host))
        })
        .collect();
    if routes.values().any(|r| r.selector.any_host()) {
        virtual_hosts.push(virtual_host("*", vec!["*".into()], routes, None));
    }
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        ..Default::default()
    }
}

/// How a route takes `host` (`None`: the catch-all virtual host): 0 names it, 1 by a wildcard,
/// 2 takes any host; `None` when it does not take it.
fn host_rank(route: &Route, host: Option<&str>) -> Option<u8> {
    let hosts = &route.selector.hosts;
    match host {
        _ if hosts.is_empty() => Some(2),
        None => None,
        Some(host) if hosts.iter().any(|h| h == host) => Some(0),
        Some(host) if !host.starts_with("*.") => hosts
            .iter()
            .filter_map(|h| h.strip_prefix('*'))
            .any(|suffix| host.ends_with(suffix))
            .then_some(1),
        Some(_) => None,
    }
}

/// The virtual host `name` for `host`, with every route that takes it, most specific first.
fn virtual_host(
    name: &str,
    domains: Vec<String>,
    routes: &RouteSet,
    host: Option<&str>,
) -> VirtualHost {
    let mut taking: Vec<(u8, &Route)> = routes
        .values()
        .filter_map(|r| host_rank(r, host).map(|rank| (rank, r)))
        .collect();
    taking.sort_by(|(ra, a), (rb, b)| {
        b.selector
            .path_prefix
            .len()
            .cmp(&a.selector.path_prefix.len())
            .then(ra.cmp(rb))
            .then(a.key().cmp(&b.key()))
    });
    VirtualHost {
        name: name.to_owned(),
        domains,
        routes: taking
            .into_iter()
            .flat_map(|(_, r)| rollout_routes(r))
            .collect(),
        ..Default::default()
    }
}

/// The Envoy routes of one rollout: affinity pin, A/B matches, then the weighted split, all
/// under its path prefix.
fn rollout_routes(route: &Route) -> Vec<EnvoyRoute> {
    let prefix = route.selector.path_prefix.as_str();
    let id = route.key();
    let mut routes = Vec::new();
    let expire_cookie: Vec<HeaderValueOption> = match &route.affinity {
        Some(a) if a.expired => vec![set_cookie(a.set_cookie())],
        _ => Vec::new(),
    };
    if let Some(a) = route.affinity.as_ref().filter(|a| !a.expired) {
        routes.push(EnvoyRoute {
            name: format!("{id}/affinity"),
            r#match: Some(prefix_match(
                prefix,
                vec![cookie_matcher(
                    &a.cookie_name,
                    &regex::escape(&a.cookie_value),
                )],
            )),
            action: Some(to_cluster(&route.canary.cluster)),
            ..Default::default()
        });
        // Primary stickiness: after the canary pin, a user holding the primary cookie stays.
        if let Some((name, _)) = &a.primary {
            routes.push(EnvoyRoute {
                name: format!("{id}/affinity-primary"),
                r#match: Some(prefix_match(
                    prefix,
                    vec![cookie_matcher(name, &regex::escape(&a.cookie_value))],
                )),
                action: Some(to_cluster(&route.primary.cluster)),
                ..Default::default()
            });
        }
    }
    for (i, rule) in route.matches.iter().enumerate() {
        routes.push(EnvoyRoute {
            name: format!("{id}/match-{i}"),
            r#match: Some(prefix_match(
                prefix,
                rule.iter().map(condition_matcher).collect(),
            )),
            action: Some(to_cluster(&route.canary.cluster)),
            response_headers_to_add: expire_cookie.clone(),
            ..Default::default()
        });
    }
    let mut clusters = Vec::new();
    if route.primary_weight > 0 {
        // Only the split's primary responses hand out the primary cookie.
        let response_headers_to_add = route
            .affinity
            .as_ref()
            .and_then(Affinity::primary_set_cookie)
            .map(set_cookie)
            .into_iter()
            .collect();
        clusters.push(weighted_cluster::ClusterWeight {
            name: route.primary.cluster.clone(),
            weight: Some(UInt32Value {
                value: route.primary_weight,
            }),
            response_headers_to_add,
            ..Default::default()
        });
    }
    if route.canary_weight > 0 {
        let response_headers_to_add = match &route.affinity {
            Some(a) if !a.expired => vec![set_cookie(a.set_cookie())],
            _ => Vec::new(),
        };
        clusters.push(weighted_cluster::ClusterWeight {
            name: route.canary.cluster.clone(),
            weight: Some(UInt32Value {
                value: route.canary_weight,
            }),
            response_headers_to_add,
            ..Default::default()
        });
    }
    let request_mirror_policies = if route.mirror_percent > 0 {
        vec![route_action::RequestMirrorPolicy {
            cluster: route.canary.cluster.clone(),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: route.mirror_percent,
                    denominator: fractional_percent::DenominatorType::Hundred as i32,
                }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    routes.push(EnvoyRoute {
        name: format!("{id}/split"),
        r#match: Some(prefix_match(prefix, Vec::new())),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters,
                    ..Default::default()
                },
            )),
            request_mirror_policies,
            ..Default::default()
        })),
        response_headers_to_add: expire_cookie,
        ..Default::default()
    });
    routes
}

/// Packs a resource into an `Any`.
pub fn to_any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn prefix_match(prefix: &str, headers: Vec<HeaderMatcher>) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_owned())),
        headers,
        ..Default::default()
    }
}

fn to_cluster(cluster: &str) -> route::Action {
    route::Action::Route(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    })
}

fn set_cookie(value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: "set-cookie".into(),
            value,
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn regex_matcher(regex: String) -> RegexMatcher {
    RegexMatcher {
        regex,
        ..Default::default()
    }
}

/// Matches a cookie `name` whose value matches `value_regex`, anywhere in the `cookie` header.
fn cookie_matcher(name: &str, value_regex: &str) -> HeaderMatcher {
    let regex = format!(
        "^(.*?;\\s*)?{}=(?:{value_regex})(;.*)?$",
        regex::escape(name)
    );
    HeaderMatcher {
        name: "cookie".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex_matcher(
                    regex,
                ))),
                ignore_case: false,
            },
        )),
        ..Default::default()
    }
}

fn condition_matcher(condition: &Condition) -> HeaderMatcher {
    match condition.kind {
        ConditionKind::Header => {
            let pattern = match &condition.value {
                StringMatch::Exact(v) => string_matcher::MatchPattern::Exact(v.clone()),
                StringMatch::Prefix(v) => string_matcher::MatchPattern::Prefix(v.clone()),
                StringMatch::Suffix(v) => string_matcher::MatchPattern::Suffix(v.clone()),
                StringMatch::Regex(v) => {
                    string_matcher::MatchPattern::SafeRegex(regex_matcher(v.clone()))
                }
            };
            HeaderMatcher {
                name: condition.name.clone(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(pattern),
                        ignore_case: false,
                    },
                )),
                ..Default::default()
            }
        }
        ConditionKind::Cookie => {
            let value_regex = match &condition.value {
                StringMatch::Exact(v) => regex::escape(v),
                StringMatch::Prefix(v) => format!("{}[^;]*", regex::escape(v)),
                StringMatch::Suffix(v) => format!("[^;]*{}", regex::escape(v)),
                // The user's pattern is for the value alone; anchors would break the wrapper.
                StringMatch::Regex(v) => {
                    let v = v.strip_prefix('^').unwrap_or(v);
                    v.strip_suffix('$').unwrap_or(v).to_owned()
                }
            };
            cookie_matcher(&condition.name, &value_regex)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Affinity, tests::desired};

    fn route(canary: u32) -> Route {
        Route::try_from(&desired(canary)).unwrap()
    }

    fn set(routes: &[Route]) -> RouteSet {
        routes.iter().map(|r| (r.key(), r.clone())).collect()
    }

    fn one(route: &Route) -> RouteConfiguration {
        route_configuration("edge", &set(std::slice::from_ref(route)))
    }

    fn named(name: &str, hosts: &[&str], prefix: &str) -> Route {
        let mut d = desired(10);
        d.rollout = Some(aviary_proto::RolloutRef::new("test", name));
        d.primary.as_mut().unwrap().name = format!("{name}-v1");
        d.canary.as_mut().unwrap().name = format!("{name}-v2");
        d.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        d.path_prefix = prefix.into();
        Route::try_from(&d).unwrap()
    }

    fn route_names(vhost: &VirtualHost) -> Vec<&str> {
        vhost.routes.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn each_host_gets_its_rollouts_most_specific_first_then_the_catch_alls() {
        let config = route_configuration(
            "edge",
            &set(&[
                named("web", &[], "/"),
                named("a", &["a.example"], "/"),
                named("a-api", &["a.example"], "/api"),
                named("sub", &["*.example"], "/"),
            ]),
        );
        let hosts: Vec<(&str, Vec<&str>)> = config
            .virtual_hosts
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.domains.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("*.example", vec!["*.example"]),
                ("a.example", vec!["a.example", "a.example:*"]),
                ("*", vec!["*"]),
            ]
        );
        assert_eq!(
            route_names(&config.virtual_hosts[1]),
            [
                "test/a-api/split",
                "test/a/split",
                "test/sub/split",
                "test/web/split"
            ]
        );
        assert_eq!(
            route_names(&config.virtual_hosts[0]),
            ["test/sub/split", "test/web/split"]
        );
        assert_eq!(route_names(&config.virtual_hosts[2]), ["test/web/split"]);
        let api = &config.virtual_hosts[1].routes[0];
        assert_eq!(
            api.r#match.as_ref().unwrap().path_specifier,
            Some(route_match::PathSpecifier::Prefix("/api".into()))
        );
    }

    #[test]
    fn without_a_catch_all_an_unnamed_host_has_no_virtual_host() {
        let config = route_configuration("edge", &set(&[named("a", &["a.example"], "/")]));
        assert!(config.virtual_hosts.iter().all(|v| v.name != "*"));
        assert!(
            route_configuration("edge", &RouteSet::new())
                .virtual_hosts
                .is_empty()
        );
    }

    fn split(config: &RouteConfiguration) -> &RouteAction {
        let last = config.virtual_hosts[0].routes.last().unwrap();
        match last.action.as_ref().unwrap() {
            route::Action::Route(action) => action,
            other => panic!("unexpected action {other:?}"),
        }
    }

    #[test]
    fn weights_leave_out_zero_entries() {
        let config = one(&route(0));
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
            &split(&config).cluster_specifier
        else {
            panic!("not weighted")
        };
        assert_eq!(w.clusters.len(), 1);
        assert_eq!(w.clusters[0].name, "test_podinfo-v1");
    }

    #[test]
    fn affinity_pins_and_sets_cookie_on_canary_only() {
        let mut r = route(20);
        r.affinity = Some(Affinity {
            cookie_name: "aviary-cookie".into(),
            cookie_value: "abc".into(),
            max_age_seconds: 60,
            expired: false,
            primary: None,
        });
        let config = one(&r);
        let routes = &config.virtual_hosts[0].routes;
        assert_eq!(routes[0].name, "test/podinfo/affinity");
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
            &split(&config).cluster_specifier
        else {
            panic!("not weighted")
        };
        assert!(w.clusters[0].response_headers_to_add.is_empty());
        assert_eq!(
            w.clusters[1].response_headers_to_add[0]
                .header
                .as_ref()
                .unwrap()
                .value,
            "aviary-cookie=abc; Max-Age=60; Path=/"
        );
        r.affinity.as_mut().unwrap().expired = true;
        let config = one(&r);
        assert_eq!(config.virtual_hosts[0].routes.len(), 1);
        assert!(
            config.virtual_hosts[0].routes[0].response_headers_to_add[0]
                .header
                .as_ref()
                .unwrap()
                .value
                .contains("Max-Age=-1")
        );
    }

    #[test]
    fn a_primary_cookie_pins_primary_users_after_canary_users() {
        let mut r = route(20);
        r.affinity = Some(Affinity {
            cookie_name: "canary-cookie".into(),
            cookie_value: "abc".into(),
            max_age_seconds: 600,
            expired: false,
            primary: Some(("primary-cookie".into(), 60)),
        });
        let config = one(&r);
        let routes = &config.virtual_hosts[0].routes;
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names[..2],
            ["test/podinfo/affinity", "test/podinfo/affinity-primary"]
        );
        let Some(route::Action::Route(action)) = routes[1].action.as_ref() else {
            panic!("not a route")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "test_podinfo-v1".into()
            ))
        );
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
            &split(&config).cluster_specifier
        else {
            panic!("not weighted")
        };
        let cookie = |i: usize| {
            w.clusters[i].response_headers_to_add[0]
                .header
                .as_ref()
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(cookie(0), "primary-cookie=abc; Max-Age=60; Path=/");
        assert_eq!(cookie(1), "canary-cookie=abc; Max-Age=600; Path=/");
        // Once the run is over neither pins, and no primary cookie is handed out.
        r.affinity.as_mut().unwrap().expired = true;
        let config = one(&r);
        assert_eq!(config.virtual_hosts[0].routes.len(), 1);
    }
}
