//! The Kubernetes providers against a mocked API server (tower-test) that expects an exact
//! sequence of requests: server-side apply (PATCH, `application/apply-patch+yaml`,
//! `fieldManager=aviary`, `force=true`) with the exact body, then the GET read-back.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aviary_proto::string_match::Kind;
use aviary_proto::{Backend as PBackend, DesiredRoute, RolloutRef};
use aviary_router_agent::model::Observed;
use aviary_router_agent::provider::kube::{KubeKind, KubeProvider, KubeSettings};
use aviary_router_agent::provider::{ApplyError, Provider};
use common::{affinity, cookie, header, route};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const APPLY_QUERY: &str = "?fieldManager=aviary&force=true";

/// `uri` as path plus its sorted, non-empty query pairs (kube writes `?&force=true&…`).
fn normalized(uri: &str) -> String {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

fn desired(canary_weight: u32) -> DesiredRoute {
    DesiredRoute {
        rollout: Some(RolloutRef::new("test", "podinfo")),
        ingress: "mesh".into(),
        primary: Some(PBackend {
            name: "podinfo-primary".into(),
            endpoints: vec!["10.0.0.1:9898".into()],
        }),
        canary: Some(PBackend {
            name: "podinfo-canary".into(),
            endpoints: vec!["10.0.0.2:9898".into()],
        }),
        primary_weight: 100 - canary_weight,
        canary_weight,
        ..Default::default()
    }
}

fn settings() -> KubeSettings {
    KubeSettings {
        namespace: "test".into(),
        route: "podinfo".into(),
        port: Some(9898),
        ..Default::default()
    }
}

fn mock_provider(kind: KubeKind, settings: KubeSettings) -> (Provider, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let provider = KubeProvider::new(kind, settings, client, Duration::from_secs(5));
    (Provider::Kube(provider), handle)
}

/// One request the mock API server expects, and how it answers.
enum Exchange {
    /// A server-side apply of exactly `body` to `path`; answered with the body as stored
    /// (with `defaults` merged in, as the API server's defaulting would).
    Apply {
        path: String,
        body: Value,
        defaults: fn(&mut Value),
    },
    /// A GET of `path`, answered with `object` (`None`: the last applied object as stored).
    Get { path: String, object: Option<Value> },
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, object: &Value) {
    send.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(object).unwrap()))
            .unwrap(),
    );
}

/// Serves `exchanges` in order, asserting each request; then asserts nothing else is asked.
async fn api_server(mut handle: Handle, exchanges: Vec<Exchange>) {
    let mut stored = Value::Null;
    for exchange in exchanges {
        let (request, send) = handle.next_request().await.expect("a request");
        let (parts, body) = request.into_parts();
        let path = parts.uri.to_string();
        match exchange {
            Exchange::Apply {
                path: want,
                body: want_body,
                defaults,
            } => {
                assert_eq!(parts.method, Method::PATCH, "{path}");
                assert_eq!(normalized(&path), want);
                assert_eq!(
                    parts.headers["content-type"],
                    "application/apply-patch+yaml"
                );
                let body: Value =
                    serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap();
                assert_eq!(
                    body,
                    want_body,
                    "apply body:\n{}",
                    serde_json::to_string_pretty(&body).unwrap()
                );
                stored = body;
                stored["metadata"]["resourceVersion"] = json!("7");
                stored["metadata"]["uid"] = json!("3c4f0a52-0d7e-4c9a-9c36-2b7f1f7f2d11");
                defaults(&mut stored);
                respond(send, &stored);
            }
            Exchange::Get { path: want, object } => {
                assert_eq!(parts.method, Method::GET, "{path}");
                assert_eq!(normalized(&path), want);
                respond(send, object.as_ref().unwrap_or(&stored));
            }
        }
    }
}

/// Runs `apply` against the mock, which serves exactly `exchanges`.
async fn apply(
    provider: Provider,
    handle: Handle,
    route: &DesiredRoute,
    exchanges: Vec<Exchange>,
) -> Result<Observed, ApplyError> {
    let route = common::route(route);
    let (result, ()) = tokio::join!(
        async move {
            let result = provider.apply(&route).await;
            drop(provider);
            result
        },
        api_server(handle, exchanges)
    );
    result
}

fn no_defaults(_: &mut Value) {}

const HTTPROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/test/httproutes/podinfo";

/// What a Gateway API implementation's CRD defaulting adds.
fn httproute_defaults(object: &mut Value) {
    for rule in object["spec"]["rules"].as_array_mut().unwrap() {
        if rule.get("matches").is_none() {
            rule["matches"] = json!([{ "path": { "type": "PathPrefix", "value": "/" } }]);
        }
        for backend in rule["backendRefs"].as_array_mut().unwrap() {
            backend["group"] = json!("");
            backend["kind"] = json!("Service");
        }
    }
}

#[tokio::test]
async fn gateway_api_sets_backend_weights() {
    let (provider, handle) = mock_provider(
        KubeKind::GatewayApi,
        KubeSettings {
            parent_refs: vec!["public-gw".into()],
            hosts: vec!["podinfo.example.com".into()],
            ..settings()
        },
    );
    let observed = apply(
        provider,
        handle,
        &desired(10),
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                body: json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "HTTPRoute",
                    "metadata": {
                        "name": "podinfo",
                        "namespace": "test",
                        "labels": { "app.kubernetes.io/managed-by": "aviary" },
                    },
                    "spec": {
                        "parentRefs": [{ "name": "public-gw" }],
                        "hostnames": ["podinfo.example.com"],
                        "rules": [{
                            "backendRefs": [
                                { "name": "podinfo-primary", "port": 9898, "weight": 90 },
                                { "name": "podinfo-canary", "port": 9898, "weight": 10 },
                            ],
                        }],
                    },
                }),
                defaults: httproute_defaults,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        observed,
        Observed {
            primary_weight: 90,
            canary_weight: 10,
            mirror_percent: 0
        }
    );
}

#[tokio::test]
async fn gateway_api_routes_matches_to_the_canary_and_mirrors_a_percentage() {
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    let mut route = desired(0);
    route.matches = vec![
        header("x-canary", Kind::Exact("insider".into())),
        cookie("canary", Kind::Exact("always".into())),
        header("x-user", Kind::Prefix("beta.".into())),
    ];
    route.mirror_percent = 20;
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                body: json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "HTTPRoute",
                    "metadata": {
                        "name": "podinfo",
                        "namespace": "test",
                        "labels": { "app.kubernetes.io/managed-by": "aviary" },
                    },
                    "spec": {
                        "rules": [
                            {
                                "matches": [
                                    { "headers": [
                                        { "name": "x-canary", "type": "Exact", "value": "insider" },
                                    ] },
                                    { "headers": [
                                        { "name": "cookie", "type": "RegularExpression",
                                          "value": "^(.*?;\\s*)?canary=always(;.*)?$" },
                                    ] },
                                    { "headers": [
                                        { "name": "x-user", "type": "RegularExpression",
                                          "value": "^beta\\..*" },
                                    ] },
                                ],
                                "backendRefs": [{ "name": "podinfo-canary", "port": 9898 }],
                            },
                            {
                                "backendRefs": [
                                    { "name": "podinfo-primary", "port": 9898, "weight": 100 },
                                    { "name": "podinfo-canary", "port": 9898, "weight": 0 },
                                ],
                                "filters": [{
                                    "type": "RequestMirror",
                                    "requestMirror": {
                                        "backendRef": { "name": "podinfo-canary", "port": 9898 },
                                        "percent": 20,
                                    },
                                }],
                            },
                        ],
                    },
                }),
                defaults: httproute_defaults,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        observed,
        Observed {
            primary_weight: 100,
            canary_weight: 0,
            mirror_percent: 20
        }
    );
}

#[tokio::test]
async fn a_split_changed_by_the_api_server_is_rejected_and_drift_is_seen() {
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    // A mutating webhook pins the split: the read-back disagrees with what was applied.
    fn pinned(object: &mut Value) {
        object["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(0);
        object["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(100);
    }
    let error = apply(
        provider,
        handle,
        &desired(30),
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                body: json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "HTTPRoute",
                    "metadata": {
                        "name": "podinfo",
                        "namespace": "test",
                        "labels": { "app.kubernetes.io/managed-by": "aviary" },
                    },
                    "spec": { "rules": [{ "backendRefs": [
                        { "name": "podinfo-primary", "port": 9898, "weight": 70 },
                        { "name": "podinfo-canary", "port": 9898, "weight": 30 },
                    ] }] },
                }),
                defaults: pinned,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ApplyError::Rejected { provider, detail }
            if provider == "gateway-api" && detail.contains("read back as 100/0")),
        "{error}"
    );

    // The reconcile check reads the object and compares it with what would be applied.
    let (provider, mut handle) = mock_provider(KubeKind::GatewayApi, settings());
    let route = route(&desired(30));
    let drifted = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "podinfo", "namespace": "test",
                      "labels": { "app.kubernetes.io/managed-by": "aviary" } },
        "spec": { "rules": [{ "backendRefs": [
            { "name": "podinfo-primary", "port": 9898, "weight": 50 },
            { "name": "podinfo-canary", "port": 9898, "weight": 50 },
        ] }] },
    });
    let server = async {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(normalized(&request.uri().to_string()), HTTPROUTE);
        respond(send, &drifted);
    };
    let (in_sync, ()) = tokio::join!(provider.in_sync(&route), server);
    assert!(!in_sync, "a hand-edited split is drift");
}

const VIRTUALSERVICE: &str = "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo";

#[tokio::test]
async fn istio_weights_matches_and_mirror() {
    let (provider, handle) = mock_provider(
        KubeKind::Istio,
        KubeSettings {
            hosts: vec!["podinfo.example.com".into()],
            gateways: vec!["public-gateway".into()],
            ..settings()
        },
    );
    let mut route = desired(25);
    route.matches = vec![
        header("x-canary", Kind::Prefix("insider".into())),
        cookie("canary", Kind::Regex("^(always|yes)$".into())),
    ];
    route.mirror_percent = 50;
    let destination = |host: &str| json!({ "host": host, "port": { "number": 9898 } });
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{VIRTUALSERVICE}{APPLY_QUERY}"),
                body: json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "metadata": {
                        "name": "podinfo",
                        "namespace": "test",
                        "labels": { "app.kubernetes.io/managed-by": "aviary" },
                    },
                    "spec": {
                        "hosts": ["podinfo.example.com"],
                        "gateways": ["public-gateway"],
                        "http": [
                            {
                                "name": "aviary-match",
                                "match": [
                                    { "headers": { "x-canary": { "prefix": "insider" } } },
                                    { "headers": { "cookie": {
                                        "regex": "^(.*?;\\s*)?canary=(?:(always|yes))(;.*)?$",
                                    } } },
                                ],
                                "route": [{ "destination": destination("podinfo-canary"), "weight": 100 }],
                            },
                            {
                                "name": "aviary-split",
                                "route": [
                                    { "destination": destination("podinfo-primary"), "weight": 75 },
                                    { "destination": destination("podinfo-canary"), "weight": 25 },
                                ],
                                "mirror": destination("podinfo-canary"),
                                "mirrorPercentage": { "value": 50.0 },
                            },
                        ],
                    },
                }),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: VIRTUALSERVICE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        observed,
        Observed {
            primary_weight: 75,
            canary_weight: 25,
            mirror_percent: 50
        }
    );
}

/// The `Cookie` header regex of the sticky rule for `common::affinity("run-1", _)`.
const STICKY_COOKIE: &str = "^(.*?;\\s*)?aviary\\-cookie=run\\-1(;.*)?$";

/// What canary responses send while the run lasts.
const SET_COOKIE: &str = "aviary-cookie=run-1; Max-Age=3600; Path=/";

/// What responses send once the run has ended.
const EXPIRE_COOKIE: &str = "aviary-cookie=run-1; Max-Age=-1; Path=/";

fn httproute(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "podinfo",
            "namespace": "test",
            "labels": { "app.kubernetes.io/managed-by": "aviary" },
        },
        "spec": { "rules": rules },
    })
}

fn set_cookie_filter(value: &str) -> Value {
    json!({
        "type": "ResponseHeaderModifier",
        "responseHeaderModifier": { "add": [{ "name": "Set-Cookie", "value": value }] },
    })
}

/// The `HTTPRoute` rules Aviary applies at 80/20 with affinity `run-1` on.
fn sticky_httproute_rules() -> Value {
    json!([
        {
            "matches": [{ "headers": [
                { "name": "cookie", "type": "RegularExpression", "value": STICKY_COOKIE },
            ] }],
            "backendRefs": [{ "name": "podinfo-canary", "port": 9898 }],
        },
        {
            "backendRefs": [
                { "name": "podinfo-primary", "port": 9898, "weight": 80 },
                { "name": "podinfo-canary", "port": 9898, "weight": 20,
                  "filters": [set_cookie_filter(SET_COOKIE)] },
            ],
        },
    ])
}

fn split(primary_weight: u32, canary_weight: u32) -> Observed {
    Observed {
        primary_weight,
        canary_weight,
        mirror_percent: 0,
    }
}

#[tokio::test]
async fn gateway_api_pins_affinity_users_and_sets_the_cookie_on_the_canary() {
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    let mut route = desired(20);
    route.session_affinity = Some(affinity("run-1", false));
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                body: httproute(sticky_httproute_rules()),
                defaults: httproute_defaults,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(80, 20), "the weights are the split's");
}

#[tokio::test]
async fn gateway_api_expires_the_affinity_cookie_when_the_run_ends() {
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    let mut route = desired(0);
    route.session_affinity = Some(affinity("run-1", true));
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                // No sticky rule; every response of the split drops the cookie.
                body: httproute(json!([{
                    "backendRefs": [
                        { "name": "podinfo-primary", "port": 9898, "weight": 100 },
                        { "name": "podinfo-canary", "port": 9898, "weight": 0 },
                    ],
                    "filters": [set_cookie_filter(EXPIRE_COOKIE)],
                }])),
                defaults: httproute_defaults,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(100, 0));
}

fn virtualservice(http: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "podinfo",
            "namespace": "test",
            "labels": { "app.kubernetes.io/managed-by": "aviary" },
        },
        "spec": { "hosts": ["podinfo-primary"], "http": http },
    })
}

fn destination(host: &str) -> Value {
    json!({ "host": host, "port": { "number": 9898 } })
}

fn set_cookie_headers(value: &str) -> Value {
    json!({ "response": { "add": { "Set-Cookie": value } } })
}

/// The `VirtualService` routes Aviary applies at 80/20 with affinity `run-1` on.
fn sticky_virtualservice_http() -> Value {
    json!([
        {
            "name": "aviary-affinity",
            "match": [{ "headers": { "cookie": { "regex": STICKY_COOKIE } } }],
            "route": [{ "destination": destination("podinfo-canary"), "weight": 100 }],
        },
        {
            "name": "aviary-split",
            "route": [
                { "destination": destination("podinfo-primary"), "weight": 80 },
                { "destination": destination("podinfo-canary"), "weight": 20,
                  "headers": set_cookie_headers(SET_COOKIE) },
            ],
        },
    ])
}

#[tokio::test]
async fn istio_pins_affinity_users_and_sets_the_cookie_on_the_canary() {
    let (provider, handle) = mock_provider(KubeKind::Istio, settings());
    let mut route = desired(20);
    route.session_affinity = Some(affinity("run-1", false));
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{VIRTUALSERVICE}{APPLY_QUERY}"),
                body: virtualservice(sticky_virtualservice_http()),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: VIRTUALSERVICE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(80, 20), "the weights are the split's");
}

#[tokio::test]
async fn istio_expires_the_affinity_cookie_when_the_run_ends() {
    let (provider, handle) = mock_provider(KubeKind::Istio, settings());
    let mut route = desired(0);
    route.session_affinity = Some(affinity("run-1", true));
    // An A/B rule still in place drops the cookie as well.
    route.matches = vec![header("x-canary", Kind::Exact("insider".into()))];
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{VIRTUALSERVICE}{APPLY_QUERY}"),
                body: virtualservice(json!([
                    {
                        "name": "aviary-match",
                        "match": [{ "headers": { "x-canary": { "exact": "insider" } } }],
                        "route": [{ "destination": destination("podinfo-canary"), "weight": 100 }],
                        "headers": set_cookie_headers(EXPIRE_COOKIE),
                    },
                    {
                        "name": "aviary-split",
                        "route": [
                            { "destination": destination("podinfo-primary"), "weight": 100 },
                            { "destination": destination("podinfo-canary"), "weight": 0 },
                        ],
                        "headers": set_cookie_headers(EXPIRE_COOKIE),
                    },
                ])),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: VIRTUALSERVICE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(100, 0));
}

#[tokio::test]
async fn weights_read_back_ignore_the_sticky_rule() {
    // The API server stores the sticky rule after the split, its single canary backend with the
    // weight the Gateway API CRD defaults to: still not the split.
    fn gateway_sticky_last(object: &mut Value) {
        httproute_defaults(object);
        let rules = object["spec"]["rules"].as_array_mut().unwrap();
        rules.rotate_left(1);
        rules[1]["backendRefs"][0]["weight"] = json!(1);
    }
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    let mut route = desired(20);
    route.session_affinity = Some(affinity("run-1", false));
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                body: httproute(sticky_httproute_rules()),
                defaults: gateway_sticky_last,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(80, 20));

    // Istio: the affinity route, all to the canary, listed after the split.
    fn istio_sticky_last(object: &mut Value) {
        object["spec"]["http"]
            .as_array_mut()
            .unwrap()
            .rotate_left(1);
    }
    let (provider, handle) = mock_provider(KubeKind::Istio, settings());
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{VIRTUALSERVICE}{APPLY_QUERY}"),
                body: virtualservice(sticky_virtualservice_http()),
                defaults: istio_sticky_last,
            },
            Exchange::Get {
                path: VIRTUALSERVICE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(80, 20));
}

#[tokio::test]
async fn a_sticky_rule_dropped_or_left_behind_is_rejected() {
    // A webhook strips the sticky rule: users on the canary would be split again.
    fn without_sticky(object: &mut Value) {
        object["spec"]["rules"].as_array_mut().unwrap().remove(0);
    }
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    let mut route = desired(20);
    route.session_affinity = Some(affinity("run-1", false));
    let error = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                body: httproute(sticky_httproute_rules()),
                defaults: without_sticky,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ApplyError::Rejected { provider, detail }
            if provider == "gateway-api"
                && detail == "HTTPRoute podinfo read back does not pin cookie aviary-cookie to the canary"),
        "{error}"
    );

    // The run has ended, but the stored VirtualService still pins the cookie.
    let (provider, handle) = mock_provider(KubeKind::Istio, settings());
    let mut route = desired(0);
    route.session_affinity = Some(affinity("run-1", true));
    let expired_split = json!({
        "name": "aviary-split",
        "route": [
            { "destination": destination("podinfo-primary"), "weight": 100 },
            { "destination": destination("podinfo-canary"), "weight": 0 },
        ],
        "headers": set_cookie_headers(EXPIRE_COOKIE),
    });
    let stale = virtualservice(json!([
        sticky_virtualservice_http()[0].clone(),
        expired_split.clone(),
    ]));
    let error = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{VIRTUALSERVICE}{APPLY_QUERY}"),
                body: virtualservice(json!([expired_split])),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: VIRTUALSERVICE.into(),
                object: Some(stale),
            },
        ],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ApplyError::Rejected { provider, detail }
            if provider == "istio"
                && detail == "VirtualService podinfo read back still pins cookie aviary-cookie to the canary"),
        "{error}"
    );
}

const TRAFFICSPLIT: &str = "/apis/split.smi-spec.io/v1alpha2/namespaces/test/trafficsplits/podinfo";

#[tokio::test]
async fn smi_sets_backend_weights() {
    let (provider, handle) = mock_provider(
        KubeKind::Smi,
        KubeSettings {
            root_service: Some("podinfo".into()),
            ..settings()
        },
    );
    let observed = apply(
        provider,
        handle,
        &desired(40),
        vec![
            Exchange::Apply {
                path: format!("{TRAFFICSPLIT}{APPLY_QUERY}"),
                body: json!({
                    "apiVersion": "split.smi-spec.io/v1alpha2",
                    "kind": "TrafficSplit",
                    "metadata": {
                        "name": "podinfo",
                        "namespace": "test",
                        "labels": { "app.kubernetes.io/managed-by": "aviary" },
                    },
                    "spec": {
                        "service": "podinfo",
                        "backends": [
                            { "service": "podinfo-primary", "weight": 60 },
                            { "service": "podinfo-canary", "weight": 40 },
                        ],
                    },
                }),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: TRAFFICSPLIT.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed.canary_weight, 40);
    assert_eq!(observed.primary_weight, 60);
}

#[tokio::test]
async fn smi_refuses_mirroring_and_matches_without_calling_the_api() {
    for (mirror, matches, feature) in [
        (10, vec![], "traffic mirroring"),
        (
            0,
            vec![header("x-canary", Kind::Exact("1".into()))],
            "header matches",
        ),
    ] {
        let (provider, mut handle) = mock_provider(KubeKind::Smi, settings());
        let mut route = desired(0);
        route.mirror_percent = mirror;
        route.matches = matches;
        let error = provider.apply(&common::route(&route)).await.unwrap_err();
        assert_eq!(
            error,
            ApplyError::Unsupported {
                provider: "smi".into(),
                feature
            }
        );
        assert_eq!(provider.kind(), "smi");
        drop(provider);
        let request = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(!matches!(request, Ok(Some(_))), "no request may be made");
    }
}

const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/test/ingresses";

fn primary_ingress() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "podinfo",
            "namespace": "test",
            "resourceVersion": "42",
            "annotations": {
                "nginx.ingress.kubernetes.io/proxy-read-timeout": "30",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        },
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{
                "host": "podinfo.example.com",
                "http": { "paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": { "service": { "name": "podinfo-primary", "port": { "number": 9898 } } },
                }] },
            }],
        },
    })
}

#[tokio::test]
async fn nginx_ingress_clones_the_ingress_with_canary_annotations() {
    let (provider, handle) = mock_provider(KubeKind::NginxIngress, settings());
    let mut route = desired(10);
    route.matches = vec![
        header("x-canary", Kind::Exact("insider".into())),
        cookie("canary", Kind::Exact("always".into())),
    ];
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Get {
                path: format!("{INGRESSES}/podinfo"),
                object: Some(primary_ingress()),
            },
            Exchange::Apply {
                path: format!("{INGRESSES}/podinfo-canary{APPLY_QUERY}"),
                body: json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "Ingress",
                    "metadata": {
                        "name": "podinfo-canary",
                        "namespace": "test",
                        "labels": { "app.kubernetes.io/managed-by": "aviary" },
                        "annotations": {
                            "nginx.ingress.kubernetes.io/proxy-read-timeout": "30",
                            "nginx.ingress.kubernetes.io/canary": "true",
                            "nginx.ingress.kubernetes.io/canary-weight": "10",
                            "nginx.ingress.kubernetes.io/canary-by-header": "x-canary",
                            "nginx.ingress.kubernetes.io/canary-by-header-value": "insider",
                            "nginx.ingress.kubernetes.io/canary-by-cookie": "canary",
                        },
                    },
                    "spec": {
                        "ingressClassName": "nginx",
                        "rules": [{
                            "host": "podinfo.example.com",
                            "http": { "paths": [{
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": { "service": { "name": "podinfo-canary", "port": { "number": 9898 } } },
                            }] },
                        }],
                    },
                }),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: format!("{INGRESSES}/podinfo-canary"),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        observed,
        Observed {
            primary_weight: 90,
            canary_weight: 10,
            mirror_percent: 0
        }
    );
}

#[tokio::test]
async fn nginx_ingress_refuses_what_its_annotations_cannot_say() {
    let cases = [
        (
            vec![cookie("canary", Kind::Regex("yes|always".into()))],
            0,
            "cookie matches other than `<name>: {exact: always}`",
        ),
        (
            vec![
                header("x-a", Kind::Exact("1".into())),
                header("x-b", Kind::Exact("1".into())),
            ],
            0,
            "more than one header or cookie rule",
        ),
        (vec![], 100, "traffic mirroring"),
    ];
    for (matches, mirror, feature) in cases {
        let (provider, mut handle) = mock_provider(KubeKind::NginxIngress, settings());
        let mut route = desired(0);
        route.matches = matches;
        route.mirror_percent = mirror;
        let error = provider.apply(&common::route(&route)).await.unwrap_err();
        assert_eq!(
            error,
            ApplyError::Unsupported {
                provider: "nginx-ingress".into(),
                feature
            }
        );
        drop(provider);
        let request = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(!matches!(request, Ok(Some(_))), "no request may be made");
    }
}

/// The `Cookie` header regex of the primary's sticky rule for `primary-cookie`, run `run-1`.
const PRIMARY_STICKY_COOKIE: &str = "^(.*?;\\s*)?primary\\-cookie=run\\-1(;.*)?$";

/// What the split's primary responses send with primary stickiness (one interval, 60 s).
const PRIMARY_SET_COOKIE: &str = "primary-cookie=run-1; Max-Age=60; Path=/";

fn with_primary_cookie(value: &str) -> aviary_proto::SessionAffinity {
    aviary_proto::SessionAffinity {
        primary_cookie_name: "primary-cookie".into(),
        primary_max_age_seconds: 60,
        ..affinity(value, false)
    }
}

#[tokio::test]
async fn gateway_api_keeps_primary_users_on_the_primary_with_a_primary_cookie() {
    let (provider, handle) = mock_provider(KubeKind::GatewayApi, settings());
    let mut route = desired(20);
    route.session_affinity = Some(with_primary_cookie("run-1"));
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{HTTPROUTE}{APPLY_QUERY}"),
                // Canary users first, then primary users, then the split handing out both.
                body: httproute(json!([
                    {
                        "matches": [{ "headers": [
                            { "name": "cookie", "type": "RegularExpression", "value": STICKY_COOKIE },
                        ] }],
                        "backendRefs": [{ "name": "podinfo-canary", "port": 9898 }],
                    },
                    {
                        "matches": [{ "headers": [
                            { "name": "cookie", "type": "RegularExpression", "value": PRIMARY_STICKY_COOKIE },
                        ] }],
                        "backendRefs": [{ "name": "podinfo-primary", "port": 9898 }],
                    },
                    {
                        "backendRefs": [
                            { "name": "podinfo-primary", "port": 9898, "weight": 80,
                              "filters": [set_cookie_filter(PRIMARY_SET_COOKIE)] },
                            { "name": "podinfo-canary", "port": 9898, "weight": 20,
                              "filters": [set_cookie_filter(SET_COOKIE)] },
                        ],
                    },
                ])),
                defaults: httproute_defaults,
            },
            Exchange::Get {
                path: HTTPROUTE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        observed,
        split(80, 20),
        "the split is read from the rule naming both, not the primary's sticky rule"
    );
}

#[tokio::test]
async fn istio_keeps_primary_users_on_the_primary_with_a_primary_cookie() {
    let (provider, handle) = mock_provider(KubeKind::Istio, settings());
    let mut route = desired(20);
    route.session_affinity = Some(with_primary_cookie("run-1"));
    let observed = apply(
        provider,
        handle,
        &route,
        vec![
            Exchange::Apply {
                path: format!("{VIRTUALSERVICE}{APPLY_QUERY}"),
                body: virtualservice(json!([
                    {
                        "name": "aviary-affinity",
                        "match": [{ "headers": { "cookie": { "regex": STICKY_COOKIE } } }],
                        "route": [{ "destination": destination("podinfo-canary"), "weight": 100 }],
                    },
                    {
                        "name": "aviary-affinity-primary",
                        "match": [{ "headers": { "cookie": { "regex": PRIMARY_STICKY_COOKIE } } }],
                        "route": [{ "destination": destination("podinfo-primary"), "weight": 100 }],
                    },
                    {
                        "name": "aviary-split",
                        "route": [
                            { "destination": destination("podinfo-primary"), "weight": 80,
                              "headers": set_cookie_headers(PRIMARY_SET_COOKIE) },
                            { "destination": destination("podinfo-canary"), "weight": 20,
                              "headers": set_cookie_headers(SET_COOKIE) },
                        ],
                    },
                ])),
                defaults: no_defaults,
            },
            Exchange::Get {
                path: VIRTUALSERVICE.into(),
                object: None,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(observed, split(80, 20));
}
