//! Pure translation of a [`Route`] into Envoy xDS resources: one cluster per backend (CDS) and
//! one `RouteConfiguration` for the ingress (RDS).
//!
//! Route order in the virtual host: affinity pin → A/B matches → weighted default. The first
//! route that matches wins, so a pinned or matched request always reaches the canary.

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

use crate::model::{Backend, Condition, ConditionKind, Route, StringMatch};

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

/// The route configuration `name` serving `route` (an empty one, answering 404, without a route).
pub fn route_configuration(name: &str, route: Option<&Route>) -> RouteConfiguration {
    let Some(route) = route else {
        return RouteConfiguration {
            name: name.to_owned(),
            ..Default::default()
        };
    };
    let mut routes = Vec::new();
    let expire_cookie: Vec<HeaderValueOption> = match &route.affinity {
        Some(a) if a.expired => vec![set_cookie(a.set_cookie())],
        _ => Vec::new(),
    };
    if let Some(a) = route.affinity.as_ref().filter(|a| !a.expired) {
        routes.push(EnvoyRoute {
            name: "affinity".into(),
            r#match: Some(prefix_match(vec![cookie_matcher(
                &a.cookie_name,
                &regex::escape(&a.cookie_value),
            )])),
            action: Some(to_cluster(&route.canary.cluster)),
            ..Default::default()
        });
    }
    for (i, rule) in route.matches.iter().enumerate() {
        routes.push(EnvoyRoute {
            name: format!("match-{i}"),
            r#match: Some(prefix_match(rule.iter().map(condition_matcher).collect())),
            action: Some(to_cluster(&route.canary.cluster)),
            response_headers_to_add: expire_cookie.clone(),
            ..Default::default()
        });
    }
    let mut clusters = Vec::new();
    if route.primary_weight > 0 {
        clusters.push(weighted_cluster::ClusterWeight {
            name: route.primary.cluster.clone(),
            weight: Some(UInt32Value {
                value: route.primary_weight,
            }),
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
        name: "split".into(),
        r#match: Some(prefix_match(Vec::new())),
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
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: route.ingress.clone(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Packs a resource into an `Any`.
pub fn to_any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn prefix_match(headers: Vec<HeaderMatcher>) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
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

    fn split(config: &RouteConfiguration) -> &RouteAction {
        let last = config.virtual_hosts[0].routes.last().unwrap();
        match last.action.as_ref().unwrap() {
            route::Action::Route(action) => action,
            other => panic!("unexpected action {other:?}"),
        }
    }

    #[test]
    fn weights_leave_out_zero_entries() {
        let config = route_configuration("edge", Some(&route(0)));
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
        });
        let config = route_configuration("edge", Some(&r));
        let routes = &config.virtual_hosts[0].routes;
        assert_eq!(routes[0].name, "affinity");
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
        let config = route_configuration("edge", Some(&r));
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
}
