//! Holds and repeats: a closed confirm-traffic-increase gate keeps the canary analysed (as
//! Flagger), rollback hooks are polled while confirm-rollout is closed, a halt still in force
//! is marked repeated, a route that keeps failing is sent again later each time, and a failed
//! post-rollout hook is reported.

use super::*;

/// Every audit event emitted so far.
fn audit(sim: &Sim) -> Vec<AuditEvent> {
    sim.actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn repeated(e: &AuditEvent) -> bool {
    e.details.contains_key(REPEATED)
}

/// Answers everything until the confirm-traffic-increase gate is asked at a weight above 0.
fn to_traffic_increase_gate(sim: &mut Sim) -> u64 {
    for _ in 0..1_000 {
        match sim.st.wait.clone() {
            Wait::Gate {
                gate: WebhookType::ConfirmTrafficIncrease,
                seq: Some(seq),
            } if sim.st.canary_weight > 0 => return seq,
            Wait::Gate {
                gate,
                seq: Some(seq),
            } => {
                sim.input(Input::GateResult {
                    seq,
                    gate,
                    open: true,
                });
            }
            Wait::Route { .. } => {
                sim.confirm_route();
            }
            Wait::Verdict { seq, .. } => {
                sim.input(Input::Verdict(verdict(seq, Outcome::Pass)));
            }
            Wait::Idle if sim.st.phase == Phase::Initializing => {
                sim.input(Input::Tick);
            }
            _ => {
                sim.now = sim.st.next_tick_at_ms.expect("a tick");
                sim.input(Input::Tick);
            }
        }
    }
    panic!("the gate was never asked: {:?}", sim.st);
}

/// Advances to the next tick and returns the analysis it requests.
fn analysis_at_next_tick(sim: &mut Sim) -> AnalysisRequest {
    assert_eq!(sim.st.wait, Wait::Interval, "{:?}", sim.st);
    sim.now = sim.st.next_tick_at_ms.expect("a tick");
    let acts = sim.input(Input::Tick);
    acts.into_iter()
        .find_map(|a| match a {
            Action::RequestAnalysis(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no analysis requested: {:?}", sim.st))
}

#[test]
fn a_closed_traffic_increase_gate_keeps_the_canary_analysed() {
    let spec = canary(30, 10, 3)
        .webhook("more", WebhookType::ConfirmTrafficIncrease)
        .webhook("undo", WebhookType::Rollback);
    let mut sim = Sim::new(spec);
    let gate = to_traffic_increase_gate(&mut sim);
    assert_eq!(sim.st.canary_weight, 10);
    sim.input(Input::GateResult {
        seq: gate,
        gate: WebhookType::ConfirmTrafficIncrease,
        open: false,
    });
    assert_eq!(sim.st.halted_since_ms, None, "a hold, not a halt");
    assert_eq!(sim.st.gate_hold, Some(WebhookType::ConfirmTrafficIncrease));

    // Every interval the canary at 10 % is analysed, rollback hooks included.
    let request = analysis_at_next_tick(&mut sim);
    assert_eq!(request.canary_weight, 10);
    assert!(request.webhooks.iter().any(|w| w.name == "undo"));
    // A pass asks the gate again; it never raises the weight by itself.
    let acts = sim.input(Input::Verdict(verdict(request.seq, Outcome::Pass)));
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::CheckGate {
                gate: WebhookType::ConfirmTrafficIncrease,
                ..
            }
        )),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::ApplyRoute(_))));
    let Wait::Gate {
        seq: Some(gate), ..
    } = sim.st.wait
    else {
        panic!("{:?}", sim.st.wait)
    };
    sim.input(Input::GateResult {
        seq: gate,
        gate: WebhookType::ConfirmTrafficIncrease,
        open: false,
    });
    let closed: Vec<AuditEvent> = audit(&sim)
        .into_iter()
        .filter(|e| e.kind == EventKind::GateClosed)
        .collect();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(!repeated(&closed[0]) && repeated(&closed[1]), "{closed:?}");

    // Failed checks count while held: the third rolls back.
    for n in 1..=3 {
        let request = analysis_at_next_tick(&mut sim);
        sim.input(Input::Verdict(verdict(request.seq, Outcome::Fail)));
        assert_eq!(sim.st.failed_checks, n);
    }
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(
        sim.weights(),
        vec![0, 10, 0],
        "the weight never went above 10"
    );
}

#[test]
fn approving_a_held_traffic_increase_raises_the_weight() {
    let mut sim = Sim::new(canary(30, 10, 3).webhook("more", WebhookType::ConfirmTrafficIncrease));
    let gate = to_traffic_increase_gate(&mut sim);
    sim.input(Input::GateResult {
        seq: gate,
        gate: WebhookType::ConfirmTrafficIncrease,
        open: false,
    });
    sim.command(Command::Approve).expect("approve while held");
    assert_eq!(sim.st.route.as_ref().map(|r| r.canary_weight), Some(20));
    assert_eq!(sim.st.gate_hold, None);
}

#[test]
fn a_rollback_hook_is_polled_while_confirm_rollout_is_closed() {
    let spec = canary(30, 10, 3)
        .webhook("start", WebhookType::ConfirmRollout)
        .webhook("undo", WebhookType::Rollback);
    let mut sim = Sim::new(spec);
    sim.input(Input::Tick);
    sim.confirm_route();
    let Wait::Gate {
        seq: Some(first), ..
    } = sim.st.wait
    else {
        panic!("{:?}", sim.st.wait)
    };
    sim.input(Input::GateResult {
        seq: first,
        gate: WebhookType::ConfirmRollout,
        open: false,
    });
    assert_eq!(sim.st.phase, Phase::Waiting);
    sim.now = sim.st.next_tick_at_ms.expect("a tick");
    let acts = sim.input(Input::Tick);
    let webhooks = acts
        .iter()
        .find_map(|a| match a {
            Action::CheckGate { webhooks, .. } => Some(webhooks.clone()),
            _ => None,
        })
        .expect("the gate is asked again");
    let names: Vec<&str> = webhooks.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["start", "undo"]);
    let Wait::Gate {
        seq: Some(again), ..
    } = sim.st.wait
    else {
        panic!("{:?}", sim.st.wait)
    };
    // A stale request changes nothing; the current one rolls back.
    sim.input(Input::RollbackRequested { seq: first });
    assert_eq!(sim.st.phase, Phase::Waiting);
    sim.input(Input::RollbackRequested { seq: again });
    assert_eq!(sim.st.phase, Phase::Failed);
}

#[test]
fn a_halt_still_in_force_is_marked_repeated() {
    let mut sim = Sim::new(canary(30, 10, 3));
    let request = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(request.seq, Outcome::Error)));
    let request = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(request.seq, Outcome::Error)));
    let request = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(request.seq, Outcome::Inconclusive)));
    let request = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(request.seq, Outcome::Pass)));
    let request = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(request.seq, Outcome::Error)));
    let halts: Vec<bool> = audit(&sim)
        .iter()
        .filter(|e| e.kind == EventKind::Halted)
        .map(repeated)
        .collect();
    // error, error again, another reason, then (after a pass) the first reason anew.
    assert_eq!(halts, [false, true, false, false]);
}

/// The wait before each send of the outstanding route while every send fails at once.
fn failing_sends(sim: &mut Sim, n: usize) -> Vec<u64> {
    let mut waits = Vec::new();
    for _ in 0..n {
        let Wait::Route { seq, .. } = sim.st.wait else {
            panic!("{:?}", sim.st.wait)
        };
        sim.input(Input::RouteFailed {
            seq,
            reason: "no agent serves ingress edge".into(),
        });
        if sim.st.wait == Wait::Idle {
            break;
        }
        let at = sim.st.next_tick_at_ms.expect("a retry");
        waits.push(at - sim.now);
        sim.now = at;
        sim.input(Input::Tick);
    }
    waits
}

#[test]
fn a_route_no_agent_acks_is_sent_again_later_each_time() {
    let mut sim = Sim::new(canary(30, 10, 3));
    let request = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(request.seq, Outcome::Pass)));
    // The 20 % route fails at every send: the retries back off, and the progress deadline
    // (600 s) still ends the run on time.
    let halted_at = sim.now;
    let waits = failing_sends(&mut sim, 7);
    assert_eq!(waits[..6], [5_000, 10_000, 20_000, 40_000, 80_000, 160_000]);
    assert_eq!(waits[6], 600_000 - 315_000, "never past the deadline");
    assert_eq!(sim.now, halted_at + 600_000);
    assert_eq!(sim.st.phase, Phase::Failed, "rolled back at the deadline");
    // The rollback route fails too (the agent is gone for good): asked at most every 5 min.
    let waits = failing_sends(&mut sim, 9);
    assert_eq!(
        waits,
        [
            5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000
        ]
    );
    assert!(matches!(sim.st.wait, Wait::Route { .. }));
    // Confirmed at last: the next failing route starts from the shortest wait again.
    sim.confirm_route();
    assert_eq!(sim.st.route_attempts, 0);
}

#[test]
fn a_failed_post_rollout_hook_is_reported() {
    let mut sim = Sim::new(canary(20, 10, 3).webhook("after", WebhookType::PostRollout));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    let before = sim.st.clone();
    sim.input(Input::HookFailed {
        hook: WebhookType::PostRollout,
        reason: "after: HTTP 500".into(),
    });
    let last = audit(&sim).pop().expect("an event");
    assert_eq!(last.kind, EventKind::HookFailed);
    assert_eq!(last.reason, "post-rollout hooks failed: after: HTTP 500");
    assert_eq!(last.phase, Phase::Succeeded);
    assert_eq!(sim.st.phase, before.phase);
    assert_eq!(sim.st.wait, before.wait);
}
