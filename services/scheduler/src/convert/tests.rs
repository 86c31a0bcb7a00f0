use super::*;
use aviary_core::clusters::ClusterPolicy;
use aviary_core::machine::{self, Outcome};
use aviary_core::spec::{RolloutSpec, Webhook};
use aviary_proto as pb;

use crate::record::RolloutRecord;

#[test]
fn the_finalise_route_keeps_expiring_the_affinity_cookie() {
    let mut spec = aviary_core::spec::RolloutSpec::test();
    spec.analysis.session_affinity = Some(aviary_core::spec::SessionAffinity {
        cookie_name: "canary".into(),
        max_age: Some(60),
        primary_cookie_name: None,
    });
    let rollout = aviary_core::spec::Rollout {
        api_version: aviary_core::spec::API_VERSION.into(),
        kind: aviary_core::spec::KIND.into(),
        metadata: aviary_core::spec::Metadata {
            name: "podinfo".into(),
            namespace: Some("test".into()),
        },
        spec: spec.clone(),
    };
    let mut status = machine::RolloutStatus::new(&spec, 1);
    status.session_cookie = Some("abc".into());
    let record = RolloutRecord {
        manifest: crate::record::Manifest::new(""),
        rollout,
        generation: 1,
        status,
        commands: Vec::new(),
        outbox: Vec::new(),
        last_checks: Vec::new(),
        event_seq: 0,
    };
    let route = finalise_command(&record, 9).route.unwrap_or_default();
    let affinity = route.session_affinity.unwrap_or_default();
    assert_eq!(
        (
            affinity.cookie_name.as_str(),
            affinity.cookie_value.as_str(),
            affinity.expired
        ),
        ("canary", "abc", true)
    );
    // Without affinity in the spec, none.
    let mut plain = record.clone();
    plain.rollout.spec.analysis.session_affinity = None;
    assert!(
        finalise_command(&plain, 9)
            .route
            .unwrap_or_default()
            .session_affinity
            .is_none()
    );
}

/// Analysis request `seq` of step `step` at `canary_weight`, over the minute from 1 s, with one
/// rollout webhook, `smoke`.
fn smoke_request(
    spec: &RolloutSpec,
    seq: u64,
    step: usize,
    canary_weight: u8,
) -> machine::AnalysisRequest {
    machine::AnalysisRequest {
        seq,
        step,
        window_start_ms: 1_000,
        window_end_ms: 61_000,
        canary_weight,
        metrics: spec.analysis.metrics.clone(),
        webhooks: vec![Webhook {
            name: "smoke".into(),
            kind: aviary_core::spec::WebhookType::Rollout,
            url: "http://127.0.0.1:8090/smoke".into(),
            ..Webhook::default()
        }],
    }
}

fn record_of(spec: RolloutSpec) -> RolloutRecord {
    RolloutRecord::new(
        crate::record::Manifest::new(""),
        aviary_core::spec::Rollout {
            api_version: aviary_core::spec::API_VERSION.into(),
            kind: aviary_core::spec::KIND.into(),
            metadata: aviary_core::spec::Metadata {
                name: "podinfo".into(),
                namespace: Some("test".into()),
            },
            spec,
        },
    )
}

#[test]
fn each_member_cluster_gets_its_request_its_provider_and_the_hooks_once() {
    let mut spec = RolloutSpec::test().clusters(&[("eu", &["edge"]), ("us", &["lb", "edge"])]);
    spec.clusters[1].metric_provider = Some(aviary_core::spec::MetricProvider {
        kind: "prometheus".into(),
        address: Some("http://127.0.0.1:9091".into()),
    });
    spec.clusters[1].canary_endpoints = vec!["127.0.0.2:9002".into()];
    let record = record_of(spec.clone());
    let targets = record.ingresses();
    let labels: Vec<_> = targets.iter().map(|t| t.label()).collect();
    assert_eq!(labels, ["eu/edge", "us/lb", "us/edge"]);
    assert!(targets[0].endpoints.is_empty());
    let us_edge: Vec<_> = targets[2].endpoints.iter().collect();
    assert_eq!(
        us_edge,
        [(&"podinfo-v2".to_owned(), &vec!["127.0.0.2:9002".to_owned()])]
    );
    let request = smoke_request(&spec, 4, 1, 10);
    let requests = cluster_analysis_requests(&record, &request);
    let clusters: Vec<_> = requests.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(clusters, ["eu", "us"]);
    let (eu, us) = (&requests[0].1, &requests[1].1);
    assert_eq!(eu.metrics[0].provider_address, "");
    assert_eq!(us.metrics[0].provider_address, "http://127.0.0.1:9091");
    assert_eq!(us.metrics[0].provider_type, "prometheus");
    assert_eq!((eu.webhooks.len(), us.webhooks.len()), (1, 0));
    for (cluster, r) in &requests {
        assert_eq!((r.window_start_ms, r.window_end_ms), (1_000, 61_000));
        assert_eq!(r.variables.get("cluster"), Some(cluster));
    }
    assert_eq!(us.variables.get("ingress").map(String::as_str), Some("lb"));
    assert_eq!(hook_cluster(&record).as_deref(), Some("eu"));
    // A single-cluster rollout asks no member cluster.
    let single = record_of(RolloutSpec::test());
    assert!(cluster_analysis_requests(&single, &request).is_empty());
    assert_eq!(hook_cluster(&single), None);
    let targets = single.ingresses();
    assert_eq!(
        (targets[0].cluster.as_ref(), targets[0].label().as_str()),
        (None, "edge")
    );
}

#[test]
fn under_waves_each_cluster_gets_its_part_and_only_the_current_wave_is_asked() {
    let mut spec = RolloutSpec::test().clusters(&[("eu", &["edge"]), ("us", &["lb", "edge"])]);
    spec.cluster_policy = Some(ClusterPolicy::Waves);
    let mut record = record_of(spec.clone());
    record.status.wave = 1;
    let route = machine::DesiredRoute {
        seq: 12,
        canary_weight: 20,
        primary_weight: 80,
        mirror_percent: 0,
        matches: Vec::new(),
        session_affinity: None,
        wave: Some(1),
    };
    let sent: Vec<_> = route_sends(&record, &route)
        .into_iter()
        .map(|(target, command)| {
            let r = command.route.expect("a route");
            (target.label(), r.canary_weight, r.primary_weight)
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("eu/edge".to_owned(), 100, 0),
            ("us/lb".to_owned(), 20, 80),
            ("us/edge".to_owned(), 20, 80),
        ]
    );
    // The finalising route is everyone's.
    let finalised: Vec<_> = finalise_sends(&record, 13)
        .into_iter()
        .map(|(_, c)| c.route.expect("a route").primary_weight)
        .collect();
    assert_eq!(finalised, [100, 100, 100]);
    let request = smoke_request(&spec, 14, 0, 20);
    let requests = cluster_analysis_requests(&record, &request);
    let asked: Vec<_> = requests
        .iter()
        .map(|(c, r)| (c.as_str(), r.webhooks.len()))
        .collect();
    assert_eq!(asked, [("us", 1)], "only us, with the step's hooks");
    assert_eq!(hook_cluster(&record).as_deref(), Some("us"));
    let status = rollout(&record, 1);
    let status = status.status.expect("a status");
    assert_eq!((status.wave, status.wave_cluster.as_str()), (1, "us"));
    // Policy all: every cluster the same route, and no wave in the status.
    let mut all = record_of(spec.clone());
    all.rollout.spec.cluster_policy = None;
    let route = machine::DesiredRoute {
        wave: None,
        ..route
    };
    assert!(
        route_sends(&all, &route)
            .iter()
            .all(|(_, c)| c.route.as_ref().is_some_and(|r| r.canary_weight == 20))
    );
    assert_eq!(rollout(&all, 1).status.expect("a status").wave_cluster, "");
}

#[test]
fn formats_rfc3339() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

#[test]
fn unspecified_outcomes_never_pass() {
    let v = pb::Verdict {
        outcome: pb::Outcome::Unspecified as i32,
        ..Default::default()
    };
    assert_eq!(verdict(1, &v).outcome, Outcome::Error);
    let v = pb::Verdict {
        outcome: pb::Outcome::Pass as i32,
        error: "boom".into(),
        ..Default::default()
    };
    assert_eq!(verdict(1, &v).outcome, Outcome::Error);
}

#[test]
fn rollback_hook_2xx_requests_rollback_and_decisive_fail_is_fail_fast() {
    let v = pb::Verdict {
        outcome: pb::Outcome::Fail as i32,
        decisive: true,
        webhooks: vec![pb::WebhookResult {
            r#type: "rollback".into(),
            status_code: 200,
            ..Default::default()
        }],
        ..Default::default()
    };
    let folded = verdict(7, &v);
    assert!(folded.rollback_requested);
    assert!(folded.fail_fast);
    assert!(folded.checks.is_empty());
}

/// A pass with a metric whose judge has not decided is an undecided pass; the same
/// metric in a failed verdict leaves it a plain fail.
#[test]
fn a_pass_on_an_undecided_judge_is_undecided() {
    let mut v = pb::Verdict {
        outcome: pb::Outcome::Pass as i32,
        metrics: vec![
            pb::MetricResult {
                name: "request-success-rate".into(),
                outcome: pb::Outcome::Pass as i32,
                judge_undecided: true,
                ..Default::default()
            },
            pb::MetricResult {
                name: "request-duration".into(),
                outcome: pb::Outcome::Pass as i32,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert!(verdict(1, &v).undecided);
    v.metrics[0].judge_undecided = false;
    assert!(!verdict(1, &v).undecided);
    v.metrics[0].judge_undecided = true;
    v.outcome = pb::Outcome::Fail as i32;
    v.metrics[1].outcome = pb::Outcome::Fail as i32;
    assert!(!verdict(1, &v).undecided);
}

#[test]
fn unreachable_rollback_hook_means_no_rollback_not_an_error() {
    let v = pb::Verdict {
        // The analyzer folded the unreachable rollback hook in as an error.
        outcome: pb::Outcome::Error as i32,
        metrics: vec![pb::MetricResult {
            name: "request-success-rate".into(),
            outcome: pb::Outcome::Pass as i32,
            ..Default::default()
        }],
        webhooks: vec![
            pb::WebhookResult {
                r#type: "rollback".into(),
                outcome: pb::Outcome::Error as i32,
                reason: "unreachable: connection refused".into(),
                ..Default::default()
            },
            pb::WebhookResult {
                r#type: "rollout".into(),
                outcome: pb::Outcome::Pass as i32,
                status_code: 200,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let folded = verdict(3, &v);
    assert!(!folded.rollback_requested);
    assert_eq!(folded.outcome, Outcome::Pass);
    // Other checks still fold as before.
    let mut failing = v.clone();
    failing.metrics[0].outcome = pb::Outcome::Fail as i32;
    assert_eq!(verdict(3, &failing).outcome, Outcome::Fail);
}
