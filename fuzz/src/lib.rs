//! The bodies of Aviary's fuzz targets, one function per target in `fuzz_targets/`.
//!
//! Each takes arbitrary bytes through a decode path a service runs on outside input, and on
//! through what the service does next with a decoded value, so a panic anywhere on that path
//! is a crash. A few properties the code documents are asserted as well (a valid spec's route
//! is accepted by the router agent; a manifest written from a rollout reads back as the same
//! rollout): breaking one is a crash too.
//!
//! The seed corpora are in `corpus/<target>/`; [`bus_seeds`] writes the protobuf ones.

use aviary_core::flagger;
use aviary_core::machine::{Action, Env, Input, Machine, RolloutStatus};
use aviary_core::plan::{self, Plan};
use aviary_core::{Rollout, strategy};
use aviary_proto::events::AuditEvent;
use aviary_proto::{self as pb, DesiredRoute};
use aviary_router_agent::model::{Route, RouteSet};
use aviary_router_agent::provider::kube::{self, KubeKind, KubeSettings};
use aviary_router_agent::provider::{envoy, haproxy, nginx};
use prost::Message;

/// An Aviary `Rollout` document: decoded, then planned, stepped once, its routes sent through
/// the router agent's conversion and every provider, and written back as a manifest.
pub fn spec_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((rollout, _warnings)) = aviary_core::parse_rollout_with_warnings(text) else {
        return;
    };
    rollout_downstream(&rollout);
}

/// A file of Flagger `Canary`, `MetricTemplate` and `AlertProvider` documents (and Aviary
/// `Rollout`s): decoded, and each rollout on as in [`spec_yaml`].
pub fn flagger(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decoded) = flagger::decode(text) else {
        return;
    };
    for rollout in &decoded.rollouts {
        rollout_downstream(rollout);
    }
}

/// Which bus message the first byte of a [`bus_proto`] input selects (the rest is the
/// payload), in this order.
pub const BUS_MESSAGES: [&str; 8] = [
    "RouteCommand",
    "RouteAck",
    "AnalysisRequest",
    "Verdict",
    "WorkloadCommand",
    "WorkloadAck",
    "AgentCapabilities",
    "DesiredRoute",
];

/// A protobuf bus payload, decoded as the service that receives it decodes it and handed on to
/// what that service does with it: the router agent's route conversion, the analyzer's request
/// checks, the scheduler's reading of verdicts and acks, the controller's operation.
pub fn bus_proto(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match usize::from(selector) % BUS_MESSAGES.len() {
        0 => {
            if let Ok(command) = pb::RouteCommand::decode(payload)
                && let Some(route) = &command.route
            {
                route_downstream(route);
            }
        }
        1 => {
            if let Ok(ack) = pb::RouteAck::decode(payload) {
                let _ = aviary_scheduler::convert::ingress_splits(std::slice::from_ref(&ack));
            }
        }
        2 => {
            if let Ok(request) = pb::AnalysisRequest::decode(payload) {
                let checked = aviary_analyzer::analysis::validate(&request);
                let _ = checked.map_err(|e| e.to_string());
                let _ = aviary_analyzer::analysis::error_verdict(Some(&request), "fuzz");
                // The analyzer's budget for the request: its longest webhook call.
                let _ = aviary_core::spec::longest_webhook_call(request.webhooks.iter().map(|w| {
                    (
                        (w.timeout_ms > 0).then(|| std::time::Duration::from_millis(w.timeout_ms)),
                        w.retries,
                    )
                }));
            }
        }
        3 => {
            if let Ok(verdict) = pb::Verdict::decode(payload) {
                let _ = aviary_scheduler::convert::verdict(1, &verdict);
                let _ = aviary_scheduler::convert::failed_hooks(&verdict);
            }
        }
        4 => {
            if let Ok(command) = pb::WorkloadCommand::decode(payload) {
                let op =
                    pb::WorkloadOp::try_from(command.op).unwrap_or(pb::WorkloadOp::Unspecified);
                let _ = op.as_str_name();
            }
        }
        5 => {
            let _ = pb::WorkloadAck::decode(payload);
        }
        6 => {
            let _ = pb::AgentCapabilities::decode(payload);
        }
        _ => {
            // The desired route as the router agent stores it in KV and reads it back.
            if let Ok(route) = DesiredRoute::decode(payload) {
                route_downstream(&route);
            }
        }
    }
}

/// A CloudEvents JSON audit event, read as the notifier reads it off the events stream, then
/// classified and rendered for every chat provider and as an `event` webhook body.
pub fn audit_event(data: &[u8]) {
    use aviary_notifier::notification::{Notification, Severity, posted};
    use aviary_notifier::providers;
    use aviary_notifier::settings::{EventWebhooks, Provider, ProviderKind, Secret};

    let Ok(event) = serde_json::from_slice::<AuditEvent>(data) else {
        return;
    };
    let Some(kind) = event.kind() else {
        return;
    };
    let severity = posted(kind, &event.data, true).unwrap_or(Severity::Info);
    let notification = Notification::new(&event, kind, severity, "fuzz");
    let _ = notification.plain();
    for kind in [
        ProviderKind::Slack,
        ProviderKind::Teams,
        ProviderKind::TeamsLegacy,
        ProviderKind::Discord,
        ProviderKind::GoogleChat,
        ProviderKind::Webhook,
    ] {
        let provider = Provider {
            name: "fuzz".into(),
            kind,
            url: Secret::new("http://127.0.0.1:9/hook"),
            channel: Some("#fuzz".into()),
            username: None,
            icon_emoji: None,
            icon_url: None,
            template: None,
            title_template: None,
            signing: None,
            timeout: std::time::Duration::from_secs(1),
            notify_failed_checks: true,
        };
        let _ = providers::payload(&provider, &notification, data);
    }
    let signing = EventWebhooks::default();
    for hook in &event.data.event_webhooks {
        let _ = providers::event_hook(hook, &event, kind, &signing);
    }
}

/// A `DesiredRoute` as protobuf, through the router agent's conversion and every provider's
/// rendering: Envoy's clusters and route configuration, NGINX's configuration text, HAProxy's
/// and each Kubernetes provider's objects.
pub fn route_render(data: &[u8]) {
    if let Ok(route) = DesiredRoute::decode(data) {
        route_downstream(&route);
    }
}

/// What the scheduler and the agents do with a valid rollout.
fn rollout_downstream(rollout: &Rollout) {
    let spec = &rollout.spec;
    let _ = strategy::resolve(spec);
    let _ = plan::canary_weights(spec);
    if let Ok(plan) = Plan::build(spec) {
        let _ = plan.weights();
        let _ = plan.promotion_min_seconds();
        let _ = plan.rollback_min_seconds();
        let _ = plan.steps().count();
    }
    if let Ok(machine) = Machine::new(spec) {
        let status = RolloutStatus::new(spec, 1);
        let env = Env {
            now_ms: 1_767_225_600_000,
            random: 7,
        };
        if let Ok(decision) = machine.step(&status, Input::Tick, env) {
            let record = record(rollout, decision.status);
            for action in &decision.actions {
                if let Action::ApplyRoute(route) = action {
                    let command = aviary_scheduler::convert::route_command(&record, route);
                    spec_route_accepted(rollout, command);
                }
            }
        }
    }
    let manifest = flagger::to_manifest(rollout).expect("a valid rollout has a manifest");
    match aviary_core::parse_rollout(&manifest) {
        Ok(back) => assert_eq!(&back, rollout, "the manifest reads back as another rollout"),
        Err(errors) => panic!("the manifest of a valid rollout does not read back: {errors}"),
    }
}

/// The route command of a valid spec is accepted by each of its ingresses' agents. (In
/// workload mode the controller names the backends before the rollout is applied, so the
/// property is one of endpoint mode.)
fn spec_route_accepted(rollout: &Rollout, command: pb::RouteCommand) {
    let Some(mut route) = command.route else {
        panic!("a route command without a route");
    };
    if rollout.spec.target_ref.is_some() {
        route_downstream(&route);
        return;
    }
    for ingress in &rollout.spec.ingresses {
        route.ingress = ingress.name.clone();
        if let Err(error) = Route::try_from(&route) {
            panic!("the agent refuses the route of a valid spec: {error}\n{route:#?}");
        }
        route_downstream(&route);
    }
}

fn record(rollout: &Rollout, status: RolloutStatus) -> aviary_scheduler::record::RolloutRecord {
    aviary_scheduler::record::RolloutRecord {
        manifest: aviary_scheduler::record::Manifest::new(""),
        rollout: rollout.clone(),
        generation: 1,
        status,
        commands: Vec::new(),
        outbox: Vec::new(),
        last_checks: Vec::new(),
        event_seq: 0,
    }
}

/// The router agent's conversion, then every provider.
fn route_downstream(desired: &DesiredRoute) {
    let Ok(route) = Route::try_from(desired) else {
        return;
    };
    let _ = route.key();
    let mut routes = RouteSet::new();
    let _ = route.conflict(&routes);
    routes.insert(route.key(), route.clone());
    for (name, capabilities) in [
        ("envoy", envoy::CAPABILITIES),
        ("nginx", nginx::CAPABILITIES),
        ("haproxy", haproxy::CAPABILITIES),
        ("nginx-ingress", kube::nginx_ingress::CAPABILITIES),
    ] {
        let _ = capabilities.check(name, &route);
    }
    let _ = envoy::resources::cluster(&route.primary);
    let _ = envoy::resources::cluster(&route.canary);
    let _ = envoy::resources::route_configuration("ingress", &routes);
    let _ = nginx::render(&routes, "127.0.0.1:8080", "1");
    let settings = KubeSettings {
        namespace: route.namespace.clone(),
        route: "podinfo".into(),
        port: Some(9898),
        parent_refs: vec!["gateway".into()],
        hosts: vec!["app.example.com".into()],
        ..KubeSettings::default()
    };
    for kind in [
        KubeKind::GatewayApi,
        KubeKind::Istio,
        KubeKind::Smi,
        KubeKind::NginxIngress,
    ] {
        let _ = kind.capabilities().check(kind.name(), &route);
    }
    let _ = kube::gateway::render(&settings, &route);
    let _ = kube::istio::render(&settings, &route);
    let _ = kube::smi::render(&settings, &route);
    let primary = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "podinfo", "namespace": route.namespace},
        "spec": {"rules": [{"host": "app.example.com", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": route.primary.name, "port": {"number": 9898}}}
        }]}}]}
    });
    let _ = kube::nginx_ingress::render(&settings, &route, &primary);
}

/// The protobuf seeds of [`bus_proto`] (`<message>-<n>`, selector byte first) and of
/// [`route_render`]: a few valid messages of each kind as the services send them.
pub fn bus_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let rollout = Some(pb::RolloutRef::new("test", "podinfo"));
    let backend = |name: &str, endpoint: &str| pb::Backend {
        name: name.into(),
        endpoints: vec![endpoint.into()],
    };
    let route = DesiredRoute {
        rollout: rollout.clone(),
        ingress: "edge".into(),
        primary: Some(backend("podinfo-v1", "127.0.0.1:9001")),
        canary: Some(backend("podinfo-v2", "127.0.0.1:9002")),
        primary_weight: 80,
        canary_weight: 20,
        hosts: vec!["app.example.com".into()],
        path_prefix: "/api".into(),
        ..Default::default()
    };
    let ab_route = DesiredRoute {
        primary_weight: 100,
        canary_weight: 0,
        matches: vec![pb::MatchRule {
            conditions: vec![pb::MatchCondition {
                kind: pb::match_condition::Kind::Header as i32,
                name: "x-canary".into(),
                value: Some(pb::StringMatch {
                    kind: Some(pb::string_match::Kind::Exact("insider".into())),
                }),
            }],
        }],
        session_affinity: Some(pb::SessionAffinity {
            cookie_name: "aviary-cookie".into(),
            cookie_value: "abc123".into(),
            max_age_seconds: 21600,
            ..Default::default()
        }),
        mirror_percent: 50,
        ..route.clone()
    };
    let mut seeds = Vec::new();
    let mut bus = |selector: usize, n: usize, bytes: Vec<u8>| {
        let mut input = vec![u8::try_from(selector).unwrap_or(0)];
        input.extend(bytes);
        seeds.push((
            "bus_proto",
            format!("{}-{n}", BUS_MESSAGES[selector]),
            input,
        ));
    };
    for (n, r) in [&route, &ab_route].into_iter().enumerate() {
        let command = pb::RouteCommand {
            idempotency_key: "test/podinfo/1/r1".into(),
            generation: 1,
            step: 1,
            route: Some(r.clone()),
        };
        bus(0, n, command.encode_to_vec());
        bus(7, n, r.encode_to_vec());
    }
    let ack = pb::RouteAck {
        idempotency_key: "test/podinfo/1/r1".into(),
        ingress: "edge".into(),
        ok: true,
        primary_weight: 80,
        canary_weight: 20,
        confirmed_at_ms: 1_767_225_600_000,
        ..Default::default()
    };
    bus(1, 0, ack.encode_to_vec());
    let request = pb::AnalysisRequest {
        idempotency_key: "test/podinfo/1/a1".into(),
        rollout: rollout.clone(),
        generation: 1,
        step: 1,
        window_start_ms: 1_767_225_600_000,
        window_end_ms: 1_767_225_660_000,
        metrics: vec![pb::MetricCheck {
            name: "request-success-rate".into(),
            min: Some(99.0),
            ..Default::default()
        }],
        webhooks: vec![pb::WebhookCheck {
            name: "load".into(),
            r#type: "rollout".into(),
            url: "http://127.0.0.1:8090/".into(),
            timeout_ms: 10_000,
            retries: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    bus(2, 0, request.encode_to_vec());
    let verdict = pb::Verdict {
        rollout: rollout.clone(),
        generation: 1,
        step: 1,
        outcome: pb::Outcome::Pass as i32,
        metrics: vec![pb::MetricResult {
            name: "request-success-rate".into(),
            value: Some(99.5),
            min: Some(99.0),
            outcome: pb::Outcome::Pass as i32,
            ..Default::default()
        }],
        webhooks: vec![pb::WebhookResult {
            name: "rollback".into(),
            r#type: "rollback".into(),
            status_code: 404,
            outcome: pb::Outcome::Fail as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    bus(3, 0, verdict.encode_to_vec());
    let workload = pb::WorkloadCommand {
        idempotency_key: "test/podinfo/1/w1".into(),
        rollout: rollout.clone(),
        generation: 1,
        op: pb::WorkloadOp::ScaleCanaryUp as i32,
        canary_revision: "abc".into(),
    };
    bus(4, 0, workload.encode_to_vec());
    let workload_ack = pb::WorkloadAck {
        idempotency_key: "test/podinfo/1/w1".into(),
        ok: true,
        done: true,
        observed: "2/2 ready".into(),
        error: String::new(),
    };
    bus(5, 0, workload_ack.encode_to_vec());
    let capabilities = envoy::CAPABILITIES.to_proto("edge", "envoy");
    bus(6, 0, capabilities.encode_to_vec());
    seeds.push(("route_render", "weighted".into(), route.encode_to_vec()));
    seeds.push((
        "route_render",
        "ab-affinity-mirror".into(),
        ab_route.encode_to_vec(),
    ));
    seeds
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Each committed corpus file runs through its target without a panic, and the protobuf
    /// seeds are committed as [`super::bus_seeds`] writes them (`AVIARY_FUZZ_WRITE_SEEDS=1`
    /// writes them).
    #[test]
    fn corpora() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let write = std::env::var_os("AVIARY_FUZZ_WRITE_SEEDS").is_some();
        for (target, name, bytes) in super::bus_seeds() {
            let path = root.join(target).join(name);
            if write {
                std::fs::create_dir_all(path.parent().expect("in a directory")).expect("mkdir");
                std::fs::write(&path, &bytes).expect("write seed");
            }
            let committed = std::fs::read(&path).expect("seed committed");
            assert_eq!(committed, bytes, "{} is stale", path.display());
        }
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 5] = [
            ("spec_yaml", super::spec_yaml),
            ("flagger", super::flagger),
            ("bus_proto", super::bus_proto),
            ("audit_event", super::audit_event),
            ("route_render", super::route_render),
        ];
        for (target, run) in targets {
            let dir = root.join(target);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).expect("corpus directory") {
                let path = entry.expect("entry").path();
                run(&std::fs::read(&path).expect("read"));
                n += 1;
            }
            assert!(n > 0, "{} is empty", dir.display());
        }
    }
}
