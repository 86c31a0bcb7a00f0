//! A rollout over several ingresses: every ingress's ack is checked (weights and mirror), a
//! mismatch halts naming the ingress, and the status keeps each ingress's observed split.

use super::Machine;
use super::types::*;
use crate::spec::{IngressRef, RolloutSpec};

const T0: u64 = 1_000_000;

fn two_ingresses() -> RolloutSpec {
    let mut spec = RolloutSpec::test();
    spec.ingresses = vec![
        IngressRef {
            name: "edge".into(),
        },
        IngressRef {
            name: "internal".into(),
        },
    ];
    spec
}

fn env(now_ms: u64) -> Env {
    Env { now_ms, random: 7 }
}

/// The status waiting for the first route (100 % primary), and that route.
fn waiting_for_route(m: &Machine, spec: &RolloutSpec) -> (RolloutStatus, DesiredRoute) {
    let d = m
        .step(&RolloutStatus::new(spec, 1), Input::Tick, env(T0))
        .expect("tick");
    let route = d
        .actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyRoute(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a route is applied first");
    (d.status, route)
}

fn ack(ingress: &str, route: &DesiredRoute, at: u64) -> IngressSplit {
    IngressSplit {
        ingress: ingress.into(),
        observed: ObservedSplit {
            canary_weight: route.canary_weight,
            primary_weight: route.primary_weight,
            mirror_percent: route.mirror_percent,
        },
        confirmed_at_ms: at,
    }
}

#[test]
fn every_ingress_serving_the_split_confirms_it_and_the_status_shows_each() {
    let spec = two_ingresses();
    let m = Machine::new(&spec).expect("valid");
    let (status, route) = waiting_for_route(&m, &spec);
    let acks = vec![ack("edge", &route, T0 + 5), ack("internal", &route, T0 + 9)];
    let d = m
        .step(
            &status,
            Input::IngressesConfirmed {
                seq: route.seq,
                ingresses: acks.clone(),
            },
            env(T0 + 10),
        )
        .expect("ack");
    assert_eq!(d.ignored, None);
    assert_ne!(d.status.phase, Phase::Initializing, "{:?}", d.status);
    assert_eq!(d.status.halt_reason, None);
    assert_eq!(d.status.ingresses, acks);
}

#[test]
fn one_ingress_serving_another_mirror_halts_naming_it() {
    let spec = two_ingresses();
    let m = Machine::new(&spec).expect("valid");
    let (status, route) = waiting_for_route(&m, &spec);
    let mut off = ack("internal", &route, T0 + 9);
    off.observed.mirror_percent = 10;
    let d = m
        .step(
            &status,
            Input::IngressesConfirmed {
                seq: route.seq,
                ingresses: vec![ack("edge", &route, T0 + 5), off],
            },
            env(T0 + 10),
        )
        .expect("ack");
    assert!(!d.status.route_confirmed);
    assert_eq!(d.status.phase, Phase::Initializing);
    let reason = d.status.halt_reason.expect("halted");
    assert!(reason.contains("\"internal\""), "{reason}");
    assert!(reason.contains("mirror 10"), "{reason}");
    assert!(d.status.ingresses.is_empty());
}

#[test]
fn an_ack_for_another_route_is_stale() {
    let spec = two_ingresses();
    let m = Machine::new(&spec).expect("valid");
    let (status, route) = waiting_for_route(&m, &spec);
    let d = m
        .step(
            &status,
            Input::IngressesConfirmed {
                seq: route.seq + 1,
                ingresses: vec![ack("edge", &route, T0)],
            },
            env(T0 + 10),
        )
        .expect("ack");
    assert_eq!(d.ignored, Some("stale route ack"));
    assert!(!d.status.route_confirmed);
}
