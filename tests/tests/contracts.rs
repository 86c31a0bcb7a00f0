//! One contract for a route from spec to data plane: every spec the validation accepts gives
//! route commands (the scheduler's, from the machine's routes) that the router agent accepts.
//! Header, cookie and session-affinity cookie names are drawn from a pool holding every
//! character the two sides once disagreed on, so a rule that drifts apart fails here.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use aviary_core::machine::{
    Action, CheckResult, Env, Input, Machine, ObservedSplit, Outcome, Phase, Verdict,
};
use aviary_proto as pb;
use aviary_router_agent::model::Route;
use aviary_scheduler::convert;
use aviary_scheduler::record::{Manifest, RolloutRecord};
use proptest::prelude::*;

/// Characters of HTTP tokens, upper case, and a few that are no token at all.
const POOL: &[char] = &[
    'a', 'z', 'Q', '0', '9', '-', '_', '.', '~', '!', '*', '+', '#', '$', '%', '&', '\'', '^', '|',
    '`', ' ', ';', '=', '/',
];

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(POOL), 0..5).prop_map(|c| c.into_iter().collect())
}

/// A YAML double-quoted scalar holding `s` (the pool has no `"` or `\`).
fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// A rollout document whose `analysis` holds `analysis` (indented under it) and one metric.
fn rollout(analysis: &str) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: app, namespace: test }}
spec:
  ingresses: [{{ name: edge }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  analysis:
    interval: 1m
    threshold: 2
{analysis}    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
"#
    )
}

fn ab_testing(header: &str, cookie: &str) -> String {
    rollout(&format!(
        "    iterations: 2\n    match:\n      - headers: {{ {}: {{ exact: insider }} }}\n      \
         - cookies: {{ {}: {{ prefix: \"yes\" }} }}\n",
        quoted(header),
        quoted(cookie)
    ))
}

fn session_affinity(cookie: &str, primary_cookie: &str) -> String {
    rollout(&format!(
        "    stepWeight: 50\n    maxWeight: 50\n    \
         sessionAffinity: {{ cookieName: {}, primaryCookieName: {} }}\n",
        quoted(cookie),
        quoted(primary_cookie)
    ))
}

/// Walks the rollout to promotion, every answer a pass, and returns every route command the
/// scheduler would send on the way (the steps' routes and the finalise).
fn route_commands(text: &str) -> Option<Vec<pb::RouteCommand>> {
    let rollout = aviary_core::parse_rollout(text).ok()?;
    let machine = Machine::new(&rollout.spec).ok()?;
    let mut record = RolloutRecord::new(Manifest::new(text), rollout);
    let mut now_ms = 1_000_000;
    let mut commands = Vec::new();
    let mut inputs = vec![Input::Tick];
    for _ in 0..200 {
        if record.status.phase == Phase::Succeeded {
            return Some(commands);
        }
        let input = inputs.pop().unwrap_or_else(|| {
            now_ms = record.status.next_tick_at_ms.unwrap_or(now_ms).max(now_ms);
            Input::Tick
        });
        let decision = machine
            .step(&record.status, input, Env { now_ms, random: 7 })
            .unwrap();
        record.status = decision.status;
        for action in decision.actions {
            match action {
                Action::ApplyRoute(route) => {
                    commands.push(convert::route_command(&record, &route));
                    inputs.push(Input::RouteConfirmed {
                        seq: route.seq,
                        observed: ObservedSplit {
                            canary_weight: route.canary_weight,
                            primary_weight: route.primary_weight,
                            mirror_percent: route.mirror_percent,
                        },
                    });
                }
                Action::Finalise { seq } => {
                    commands.push(convert::finalise_command(&record, seq));
                    inputs.push(Input::Finalised { seq });
                }
                Action::RequestAnalysis(request) => inputs.push(Input::Verdict(Verdict {
                    seq: request.seq,
                    outcome: Outcome::Pass,
                    checks: vec![CheckResult {
                        name: "request-success-rate".into(),
                        outcome: Outcome::Pass,
                        value: Some(100.0),
                        message: String::new(),
                    }],
                    fail_fast: false,
                    early_promote: false,
                    rollback_requested: false,
                    undecided: false,
                })),
                _ => {}
            }
        }
    }
    panic!("not promoted: {:?}", record.status)
}

/// Every command's route, as the agent of ingress `edge` reads it.
fn agent_accepts(commands: &[pb::RouteCommand]) -> Result<(), String> {
    assert!(!commands.is_empty(), "a promotion sends routes");
    for command in commands {
        let mut route = command.route.clone().unwrap();
        route.ingress = "edge".into();
        Route::try_from(&route).map_err(|e| format!("{e} in {route:?}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_accepted_match_rule_is_a_route_the_agent_accepts(header in name(), cookie in name()) {
        if let Some(commands) = route_commands(&ab_testing(&header, &cookie)) {
            prop_assert!(commands.iter().any(|c| !c.route.as_ref().unwrap().matches.is_empty()));
            agent_accepts(&commands).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn every_accepted_affinity_cookie_is_a_route_the_agent_accepts(
        cookie in name(),
        primary in name(),
    ) {
        if let Some(commands) = route_commands(&session_affinity(&cookie, &primary)) {
            prop_assert!(commands.iter().any(|c| c.route.as_ref().unwrap().session_affinity.is_some()));
            agent_accepts(&commands).map_err(TestCaseError::fail)?;
        }
    }
}

/// The pool reaches both sides of the rule: some names are accepted and some refused, so the
/// properties above are not vacuous.
#[test]
fn the_names_drawn_are_both_accepted_and_refused() {
    assert!(route_commands(&ab_testing("x-canary", "beta_1.~!*+")).is_some());
    for refused in ["x_canary", "X-Canary", "x$y", ""] {
        assert!(
            route_commands(&ab_testing(refused, "beta")).is_none(),
            "{refused:?}"
        );
    }
    for refused in ["a#b", "a$b", "a'b", "a b", "a;b", ""] {
        assert!(
            route_commands(&ab_testing("x-canary", refused)).is_none(),
            "{refused:?}"
        );
        assert!(
            route_commands(&session_affinity(refused, "p")).is_none(),
            "{refused:?}"
        );
    }
    assert!(route_commands(&session_affinity("c.1", "p~2")).is_some());
}
