//! Staged campaigns (as Symphony's): a `check` step runs an HTTP check; on failure the run
//! goes back to a named earlier `stage` at a lower weight, a bounded number of times, then
//! rolls back; a check without `onFailure` rolls back at once; no answer is a halt.

use super::*;
use crate::spec::{CheckFailure, CheckStep};

fn check(name: &str, back: Option<(&str, u8, u32)>) -> Step {
    Step::Check(CheckStep {
        name: name.into(),
        url: format!("http://127.0.0.1:8090/{name}"),
        on_failure: back.map(|(stage, weight, returns)| CheckFailure {
            go_to: stage.into(),
            set_weight: weight,
            max_returns: Some(returns),
        }),
        ..CheckStep::default()
    })
}

/// stage one (10 %, smoke) → stage two (40 %, e2e back to one at 5 %, twice) → last (80 %,
/// final check: no return).
fn campaign() -> RolloutSpec {
    RolloutSpec::test().steps(vec![
        Step::Stage("one".into()),
        Step::SetWeight(10),
        check("smoke", None),
        Step::Stage("two".into()),
        Step::SetWeight(40),
        check("e2e", Some(("one", 5, 2))),
        Step::Stage("last".into()),
        Step::SetWeight(80),
        check("final", None),
    ])
}

/// Runs routes and ticks until a check is asked; answers nothing else.
fn to_check(sim: &mut Sim) -> (u64, String) {
    for _ in 0..1_000 {
        match sim.st.wait.clone() {
            Wait::Check { seq: Some(seq) } => {
                let name = sim
                    .actions
                    .iter()
                    .rev()
                    .find_map(|(_, a)| match a {
                        Action::RunCheck { seq: s, webhook } if *s == seq => {
                            Some(webhook.name.clone())
                        }
                        _ => None,
                    })
                    .expect("the RunCheck");
                return (seq, name);
            }
            Wait::Route { .. } => {
                sim.confirm_route();
            }
            Wait::Idle if sim.st.phase == Phase::Initializing => {
                sim.input(Input::Tick);
            }
            _ => {
                sim.now = sim.now.max(sim.st.next_tick_at_ms.expect("a tick"));
                sim.input(Input::Tick);
            }
        }
    }
    panic!("no check asked: {:?}", sim.st);
}

fn answer(sim: &mut Sim, seq: u64, passed: bool) {
    sim.input(Input::CheckResult {
        seq,
        passed,
        reason: if passed {
            String::new()
        } else {
            "HTTP 500".into()
        },
    });
}

#[test]
fn a_failing_check_returns_to_its_stage_at_a_lower_weight_then_the_campaign_goes_on() {
    let mut sim = Sim::new(campaign());
    let (seq, name) = to_check(&mut sim);
    assert_eq!(name, "smoke");
    assert_eq!(sim.st.canary_weight, 10);
    answer(&mut sim, seq, true);
    let (seq, name) = to_check(&mut sim);
    assert_eq!((name.as_str(), sim.st.canary_weight), ("e2e", 40));
    // e2e fails: back to stage one, at 5 % instead of its 10 %.
    answer(&mut sim, seq, false);
    assert!(sim.events().contains(&EventKind::CheckFailed));
    assert_ne!(sim.st.phase, Phase::Failed);
    let (seq, name) = to_check(&mut sim);
    assert_eq!(name, "smoke", "stage one runs again");
    assert_eq!(sim.st.canary_weight, 5, "at the lower weight");
    answer(&mut sim, seq, true);
    // Stage two's own weight is served again after the return.
    let (seq, name) = to_check(&mut sim);
    assert_eq!((name.as_str(), sim.st.canary_weight), ("e2e", 40));
    answer(&mut sim, seq, true);
    let (seq, name) = to_check(&mut sim);
    assert_eq!((name.as_str(), sim.st.canary_weight), ("final", 80));
    answer(&mut sim, seq, true);
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.weights(), vec![0, 10, 40, 5, 40, 80, 100]);
}

#[test]
fn returns_are_bounded_then_the_rollout_rolls_back() {
    let mut sim = Sim::new(campaign());
    let mut returns = 0;
    loop {
        let (seq, name) = to_check(&mut sim);
        let fail = name == "e2e";
        answer(&mut sim, seq, !fail);
        if sim.st.phase == Phase::Failed {
            break;
        }
        if fail {
            returns += 1;
        }
        assert!(returns <= 2, "at most maxReturns returns");
    }
    assert_eq!(returns, 2, "both returns were used before the rollback");
    assert!(sim.st.message.contains("e2e"), "{}", sim.st.message);
    assert_eq!(sim.st.check_returns.get("e2e"), Some(&2));
    sim.run(Outcome::Pass, true);
    assert_eq!(
        sim.weights().last(),
        Some(&0),
        "traffic back on the primary"
    );
}

#[test]
fn a_check_without_on_failure_rolls_back_at_once() {
    let mut sim = Sim::new(campaign());
    let (seq, _) = to_check(&mut sim);
    answer(&mut sim, seq, true);
    let (seq, _) = to_check(&mut sim);
    answer(&mut sim, seq, true);
    let (seq, name) = to_check(&mut sim);
    assert_eq!(name, "final");
    answer(&mut sim, seq, false);
    assert_eq!(
        sim.st.phase,
        Phase::Failed,
        "the last stage stops the campaign"
    );
    assert!(sim.st.message.contains("final"), "{}", sim.st.message);
}

#[test]
fn an_unanswered_check_halts_and_is_asked_again() {
    let mut sim = Sim::new(campaign());
    let (seq, _) = to_check(&mut sim);
    sim.input(Input::CheckUnanswered {
        seq,
        reason: "no responders".into(),
    });
    assert!(sim.st.halted_since_ms.is_some(), "a halt");
    assert_ne!(sim.st.phase, Phase::Failed);
    assert_eq!(sim.st.failed_checks, 0, "no answer is not a failure");
    let (again, name) = to_check(&mut sim);
    assert!(again > seq);
    assert_eq!(name, "smoke");
    // A late answer to the first ask is ignored.
    answer(&mut sim, seq, false);
    assert_ne!(sim.st.phase, Phase::Failed);
    answer(&mut sim, again, true);
    assert!(
        sim.st.halted_since_ms.is_none(),
        "the answer clears the halt"
    );
    // A new run starts with no returns used.
    assert!(sim.st.check_returns.is_empty());
}
