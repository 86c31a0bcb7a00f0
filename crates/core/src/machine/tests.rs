//! Table tests for DESIGN.md §4's worked examples and property tests for the invariants, all
//! driving the pure machine with inputs and asserting on the actions it emits.

use proptest::prelude::*;

use super::Machine;
use super::types::*;

mod campaign;
mod clusters;
mod holds;
use crate::duration::HumanDuration;
use crate::spec::{AnalysisStep, ApprovalStep, PauseStep, RolloutSpec, Step, WebhookType};

const MIN: u64 = 60_000;
const T0: u64 = 1_000_000;

/// Drives a machine the way the scheduler would, with answers chosen by the test.
struct Sim {
    m: Machine,
    st: RolloutStatus,
    now: u64,
    actions: Vec<(u64, Action)>,
    random: u64,
}

impl Sim {
    fn new(spec: RolloutSpec) -> Sim {
        let m = Machine::new(&spec).expect("valid spec");
        Sim {
            st: RolloutStatus::new(&spec, 1),
            m,
            now: T0,
            actions: Vec::new(),
            random: 0xfeed,
        }
    }

    fn env(&mut self) -> Env {
        self.random = self
            .random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        Env {
            now_ms: self.now,
            random: self.random,
        }
    }

    fn feed(&mut self, input: Input) -> Result<Vec<Action>, CommandError> {
        let env = self.env();
        let d = self.m.step(&self.st, input, env)?;
        self.st = d.status;
        for a in &d.actions {
            self.actions.push((self.now, a.clone()));
        }
        Ok(d.actions)
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        self.feed(input).expect("not a command")
    }

    /// Confirms the outstanding route as served exactly as asked.
    fn confirm_route(&mut self) -> Vec<Action> {
        let Wait::Route { seq, .. } = self.st.wait else {
            panic!("no route outstanding: {:?}", self.st.wait)
        };
        let r = self.st.route.clone().expect("route");
        self.input(Input::RouteConfirmed {
            seq,
            observed: ObservedSplit {
                canary_weight: r.canary_weight,
                primary_weight: r.primary_weight,
                mirror_percent: r.mirror_percent,
            },
        })
    }

    fn command(&mut self, c: Command) -> Result<Vec<Action>, CommandError> {
        self.feed(Input::Command(c))
    }

    /// Answers whatever is outstanding: routes confirmed as asked, gates with `gate_open`,
    /// verdicts with `outcome`, time advanced to the next tick. Stops at a terminal phase or
    /// when only a person can move the rollout on.
    fn run(&mut self, outcome: Outcome, gate_open: bool) {
        self.run_answering(outcome, gate_open, |_, seq| verdict(seq, outcome));
    }

    /// As [`Sim::run`], with each verdict from `answer(sim, seq)`.
    fn run_answering(
        &mut self,
        outcome: Outcome,
        gate_open: bool,
        mut answer: impl FnMut(&Sim, u64) -> Verdict,
    ) {
        for _ in 0..10_000 {
            if self.st.phase.is_terminal() && self.st.wait == Wait::Idle {
                return;
            }
            match self.st.wait.clone() {
                Wait::Route { .. } => {
                    self.confirm_route();
                }
                Wait::Verdict { seq, .. } => {
                    let v = answer(self, seq);
                    self.input(Input::Verdict(v));
                }
                Wait::Gate {
                    gate,
                    seq: Some(seq),
                } => {
                    self.input(Input::GateResult {
                        seq,
                        gate,
                        open: gate_open,
                    });
                }
                Wait::Finalise { seq, .. } => {
                    self.input(Input::Finalised { seq });
                }
                Wait::Check { seq: Some(seq) } => {
                    self.input(Input::CheckResult {
                        seq,
                        passed: outcome == Outcome::Pass,
                        reason: String::new(),
                    });
                }
                Wait::Workload { seq, .. } => {
                    self.input(Input::WorkloadDone {
                        seq,
                        done: true,
                        observed: "ready".into(),
                    });
                }
                Wait::Idle if self.st.phase == Phase::Initializing => {
                    self.input(Input::Tick);
                }
                Wait::Idle | Wait::Approval | Wait::Pause { until_ms: None } => return,
                Wait::Interval
                | Wait::Pause { .. }
                | Wait::Gate { seq: None, .. }
                | Wait::Check { seq: None } => {
                    let at = self.st.next_tick_at_ms.expect("a tick is scheduled");
                    self.now = self.now.max(at);
                    self.input(Input::Tick);
                }
            }
        }
        panic!("rollout did not settle: {:?}", self.st);
    }

    fn routes(&self) -> Vec<DesiredRoute> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::ApplyRoute(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    fn weights(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for r in self.routes() {
            if out.last() != Some(&r.canary_weight) {
                out.push(r.canary_weight);
            }
        }
        out
    }

    fn events(&self) -> Vec<EventKind> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Emit(e) => Some(e.kind),
                _ => None,
            })
            .collect()
    }

    fn event_time(&self, kind: EventKind) -> u64 {
        self.actions
            .iter()
            .find_map(|(t, a)| match a {
                Action::Emit(e) if e.kind == kind => Some(*t),
                _ => None,
            })
            .expect("event emitted")
    }

    fn analyses(&self) -> usize {
        self.actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::RequestAnalysis(_)))
            .count()
    }
}

fn verdict(seq: u64, outcome: Outcome) -> Verdict {
    Verdict {
        seq,
        outcome,
        checks: vec![CheckResult {
            name: "request-success-rate".into(),
            outcome,
            value: Some(99.5),
            message: String::new(),
        }],
        fail_fast: false,
        early_promote: false,
        rollback_requested: false,
        undecided: false,
    }
}

fn canary(max: u8, step: u8, threshold: u32) -> RolloutSpec {
    RolloutSpec::test()
        .interval(HumanDuration::from_secs(60))
        .threshold(threshold)
        .max_weight(max)
        .step_weight(step)
}

#[test]
fn example_stepweight_2_to_50() {
    let mut sim = Sim::new(canary(50, 2, 10));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    let mut want = vec![0u8];
    want.extend((1..=25).map(|k| k * 2));
    want.push(100);
    assert_eq!(sim.weights(), want);
    assert_eq!(sim.analyses(), 25);
    let elapsed = sim.event_time(EventKind::Promoting) - sim.event_time(EventKind::Progressing);
    assert_eq!(elapsed, 25 * MIN, "promotion after interval × 25 steps");
    assert_eq!(sim.st.passed_steps, (0..25).collect::<Vec<_>>());
}

#[test]
fn example_failing_canary_rolls_back_after_threshold_intervals() {
    let mut sim = Sim::new(canary(50, 2, 10));
    sim.run(Outcome::Fail, true);
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(sim.st.failed_checks, 10);
    assert_eq!(sim.weights(), vec![0, 2, 0]);
    let last = sim.routes().pop().expect("route");
    assert_eq!((last.canary_weight, last.primary_weight), (0, 100));
    assert_eq!(sim.st.canary_weight, 0);
    assert_eq!(sim.st.primary_weight, 100);
    let elapsed = sim.event_time(EventKind::RolledBack) - sim.event_time(EventKind::Progressing);
    assert_eq!(elapsed, 10 * MIN, "rollback after interval × threshold");
    assert!(
        sim.events()
            .iter()
            .filter(|k| **k == EventKind::CheckFailed)
            .count()
            == 10
    );
}

#[test]
fn example_maxweight_overshoot() {
    let mut sim = Sim::new(canary(50, 20, 5));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.weights(), vec![0, 20, 40, 60, 100]);
    let splits: Vec<(u8, u8)> = sim
        .routes()
        .iter()
        .map(|r| (r.canary_weight, r.primary_weight))
        .collect();
    assert_eq!(
        splits,
        vec![(0, 100), (20, 80), (40, 60), (60, 40), (100, 0)]
    );
    assert_eq!(sim.st.phase, Phase::Succeeded);
}

#[test]
fn example_stepweights() {
    let mut sim = Sim::new(RolloutSpec::test().step_weights(&[1, 2, 10, 80]));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.weights(), vec![0, 1, 2, 10, 80, 100]);
    assert_eq!(sim.st.phase, Phase::Succeeded);
}

#[test]
fn example_ab_testing() {
    let spec = RolloutSpec::test()
        .iterations(10)
        .match_header("x-canary", "insider")
        .threshold(2);
    let mut sim = Sim::new(spec);
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.st.iterations_done, 10);
    assert_eq!(sim.analyses(), 10);
    let routes = sim.routes();
    assert!(routes[1].matches.len() == 1 && routes[1].canary_weight == 0);
    let elapsed = sim.event_time(EventKind::Promoting) - sim.event_time(EventKind::Progressing);
    assert_eq!(elapsed, 10 * MIN, "promotion after interval × iterations");

    let spec = RolloutSpec::test()
        .iterations(10)
        .match_header("x-canary", "insider")
        .threshold(2);
    let mut sim = Sim::new(spec);
    sim.run(Outcome::Fail, true);
    assert_eq!(sim.st.phase, Phase::Failed);
    let elapsed = sim.event_time(EventKind::RolledBack) - sim.event_time(EventKind::Progressing);
    assert_eq!(elapsed, 2 * MIN, "rollback after interval × threshold");
    assert!(
        sim.routes()
            .last()
            .is_some_and(|r| r.matches.is_empty() && r.primary_weight == 100)
    );
}

#[test]
fn example_blue_green_and_mirror() {
    let mut sim = Sim::new(RolloutSpec::test().iterations(5));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.weights(), vec![0, 100]);
    assert_eq!(sim.analyses(), 5);
    let elapsed = sim.event_time(EventKind::Promoting) - sim.event_time(EventKind::Progressing);
    assert_eq!(elapsed, 5 * MIN);

    let mut sim = Sim::new(RolloutSpec::test().iterations(3).mirror(Some(50)));
    sim.run(Outcome::Pass, true);
    let routes = sim.routes();
    assert_eq!(routes[1].mirror_percent, 50);
    assert_eq!(
        (routes[1].canary_weight, routes[1].primary_weight),
        (0, 100)
    );
    assert_eq!(
        routes.last().map(|r| (r.canary_weight, r.mirror_percent)),
        Some((100, 0))
    );
    assert_eq!(sim.st.phase, Phase::Succeeded);
}

#[test]
fn step_weight_promotion_moves_one_increment_per_interval() {
    let mut sim = Sim::new(canary(50, 25, 3).step_weight_promotion(20));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.weights(), vec![0, 25, 50, 70, 90, 100]);
    let t70 = sim.actions.iter().find_map(|(t, a)| match a {
        Action::ApplyRoute(r) if r.canary_weight == 70 => Some(*t),
        _ => None,
    });
    let t90 = sim.actions.iter().find_map(|(t, a)| match a {
        Action::ApplyRoute(r) if r.canary_weight == 90 => Some(*t),
        _ => None,
    });
    assert_eq!(t90.zip(t70).map(|(b, a)| b - a), Some(MIN));
    assert_eq!(sim.analyses(), 2, "no analysis during promotion");
}

#[test]
fn skip_analysis_promotes_without_metrics_or_webhooks_but_asks_confirm_rollout() {
    let spec = canary(50, 10, 2)
        .skip_analysis(true)
        .webhook("gate", WebhookType::ConfirmRollout)
        .webhook("pre", WebhookType::PreRollout)
        .webhook("post", WebhookType::PostRollout);
    // A closed confirm-rollout holds it, as in Flagger.
    let mut held = Sim::new(spec.clone());
    held.input(Input::Tick);
    held.confirm_route();
    let Wait::Gate { seq: Some(g), gate } = held.st.wait else {
        panic!("{:?}", held.st.wait)
    };
    assert_eq!(gate, WebhookType::ConfirmRollout);
    held.input(Input::GateResult {
        seq: g,
        gate,
        open: false,
    });
    assert_eq!(held.st.phase, Phase::Waiting);
    assert_eq!(held.weights(), vec![0]);
    // Once open: promoted at once, with no analysis and no other hook.
    let mut sim = Sim::new(spec);
    sim.run(Outcome::Fail, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.weights(), vec![0, 100]);
    assert_eq!(sim.analyses(), 0);
    let gates: Vec<WebhookType> = sim
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::CheckGate { gate, .. } => Some(*gate),
            _ => None,
        })
        .collect();
    assert_eq!(gates, [WebhookType::ConfirmRollout]);
    assert!(
        !sim.actions
            .iter()
            .any(|(_, a)| matches!(a, Action::RunHooks { .. }))
    );
}

#[test]
fn setting_skip_analysis_mid_analysis_cancels_and_promotes() {
    let spec = canary(50, 10, 2);
    let mut sim = Sim::new(spec.clone());
    sim.input(Input::Tick);
    let Wait::Route { seq, .. } = sim.st.wait else {
        panic!("route")
    };
    sim.input(Input::RouteConfirmed {
        seq,
        observed: ObservedSplit {
            canary_weight: 0,
            primary_weight: 100,
            mirror_percent: 0,
        },
    });
    let Wait::Route { seq, .. } = sim.st.wait else {
        panic!("step route")
    };
    sim.input(Input::RouteConfirmed {
        seq,
        observed: ObservedSplit {
            canary_weight: 10,
            primary_weight: 90,
            mirror_percent: 0,
        },
    });
    sim.now += MIN;
    sim.input(Input::Tick);
    let Wait::Verdict { seq: analysis, .. } = sim.st.wait else {
        panic!("verdict wait")
    };
    sim.m = Machine::new(&spec.skip_analysis(true)).expect("valid");
    let acts = sim.input(Input::SpecChanged { generation: 2 });
    assert_eq!(sim.st.phase, Phase::Promoting);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::ApplyRoute(r) if r.canary_weight == 100))
    );
    // The cancelled analysis's verdict is stale now.
    let d = sim
        .m
        .step(
            &sim.st,
            Input::Verdict(verdict(analysis, Outcome::Fail)),
            Env {
                now_ms: sim.now,
                random: 1,
            },
        )
        .expect("ok");
    assert!(d.ignored.is_some());
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
}

#[test]
fn session_affinity_cookie_per_run_and_expired_at_the_end() {
    let spec = canary(20, 10, 1).session_affinity("aviary-cookie", 21600);
    let mut sim = Sim::new(spec);
    sim.run(Outcome::Fail, true);
    assert_eq!(sim.st.phase, Phase::Failed);
    let routes = sim.routes();
    let first = routes[1]
        .session_affinity
        .clone()
        .expect("cookie on canary route");
    assert_eq!(first.cookie_name, "aviary-cookie");
    assert_eq!(first.max_age_seconds, 21600);
    let last = routes
        .last()
        .and_then(|r| r.session_affinity.clone())
        .expect("expiry");
    assert_eq!(last.max_age_seconds, -1);
    assert_eq!(last.cookie_value, first.cookie_value);

    sim.command(Command::Retry)
        .expect("retry allowed when failed");
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    let routes = sim.routes();
    let second = routes
        .iter()
        .rev()
        .find_map(|r| r.session_affinity.clone().filter(|c| c.max_age_seconds > 0))
        .expect("cookie in second run");
    assert_ne!(
        second.cookie_value, first.cookie_value,
        "a new run uses a new cookie"
    );
    assert_eq!(
        routes
            .last()
            .and_then(|r| r.session_affinity.as_ref())
            .map(|c| c.max_age_seconds),
        Some(-1)
    );
}

#[test]
fn inconclusive_halts_without_failing_and_deadline_rolls_back() {
    let mut sim = Sim::new(canary(50, 10, 2).progress_deadline(300));
    for _ in 0..200 {
        if sim.st.phase.is_terminal() {
            break;
        }
        sim.run(Outcome::Inconclusive, true);
    }
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(
        sim.st.failed_checks, 0,
        "halts never count as failed checks"
    );
    assert_eq!(
        sim.weights(),
        vec![0, 10, 0],
        "never advanced past the first step"
    );
    assert!(sim.events().contains(&EventKind::Halted));
    let halted = sim.event_time(EventKind::Halted);
    let failed = sim.event_time(EventKind::RolledBack);
    assert!(failed - halted >= 300_000 && failed - halted <= 300_000 + MIN);
}

#[test]
fn analyzer_errors_halt_until_the_deadline() {
    let mut sim = Sim::new(canary(20, 10, 2));
    sim.run(Outcome::Error, true);
    // Errors never advance and never count; the default 600 s deadline fails the rollout.
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(sim.st.failed_checks, 0);
    assert_eq!(sim.weights(), vec![0, 10, 0]);
    let halted = sim.event_time(EventKind::Halted);
    assert!(sim.event_time(EventKind::RolledBack) - halted >= 600_000);
}

#[test]
fn free_step_function_reports_bad_specs() {
    let spec = RolloutSpec::test().step_weight(0);
    let st = RolloutStatus::new(&spec, 1);
    let err = super::step(
        &spec,
        &st,
        Input::Tick,
        Env {
            now_ms: 0,
            random: 0,
        },
    );
    assert!(
        matches!(err, Err(super::StepError::InvalidSpec(e)) if e.has_path("spec.analysis.stepWeight"))
    );
    let spec = RolloutSpec::test();
    let d = super::step(
        &spec,
        &st,
        Input::Tick,
        Env {
            now_ms: 0,
            random: 0,
        },
    )
    .expect("valid");
    assert!(matches!(d.actions.first(), Some(Action::ApplyRoute(r)) if r.primary_weight == 100));
}

#[test]
fn fail_fast_and_rollback_webhook_roll_back_at_once() {
    for flag in 0..2 {
        let mut sim = Sim::new(canary(50, 10, 5));
        sim.input(Input::Tick);
        while !matches!(sim.st.wait, Wait::Verdict { .. }) {
            match sim.st.wait.clone() {
                Wait::Route { seq, .. } => {
                    let r = sim.st.route.clone().expect("route");
                    sim.input(Input::RouteConfirmed {
                        seq,
                        observed: ObservedSplit {
                            canary_weight: r.canary_weight,
                            primary_weight: r.primary_weight,
                            mirror_percent: 0,
                        },
                    });
                }
                _ => {
                    sim.now = sim.st.next_tick_at_ms.expect("tick");
                    sim.input(Input::Tick);
                }
            }
        }
        let Wait::Verdict { seq, .. } = sim.st.wait else {
            panic!()
        };
        let mut v = verdict(
            seq,
            if flag == 0 {
                Outcome::Fail
            } else {
                Outcome::Pass
            },
        );
        v.fail_fast = flag == 0;
        v.rollback_requested = flag == 1;
        sim.input(Input::Verdict(v));
        assert_eq!(sim.st.phase, Phase::Failed);
        assert!(matches!(sim.routes().last(), Some(r) if r.primary_weight == 100));
    }
}

#[test]
fn an_unanswered_pre_rollout_gate_halts_and_never_counts_a_failed_check() {
    let spec = canary(20, 10, 1).webhook("pre", WebhookType::PreRollout);
    let mut sim = Sim::new(spec);
    sim.input(Input::Tick);
    sim.confirm_route();
    for _ in 0..3 {
        let Wait::Gate { seq: Some(g), gate } = sim.st.wait else {
            panic!("{:?}", sim.st.wait)
        };
        assert_eq!(gate, WebhookType::PreRollout);
        sim.input(Input::GateUnanswered {
            seq: g,
            gate,
            reason: "no responders".into(),
        });
        assert_eq!(sim.st.failed_checks, 0, "no answer is not a failed check");
        assert!(
            sim.st
                .halt_reason
                .as_deref()
                .is_some_and(|r| r.contains("no responders"))
        );
        assert!(!sim.st.phase.is_terminal());
        sim.now = sim.st.next_tick_at_ms.expect("asked again");
        sim.input(Input::Tick);
    }
    // An answer comes: the run goes on.
    let Wait::Gate { seq: Some(g), gate } = sim.st.wait else {
        panic!("{:?}", sim.st.wait)
    };
    sim.input(Input::GateResult {
        seq: g,
        gate,
        open: true,
    });
    assert_eq!(sim.st.phase, Phase::Progressing);
    assert_eq!(sim.st.halt_reason, None);
}

#[test]
fn a_new_owner_asks_again_exactly_what_the_previous_one_was_waiting_on() {
    let spec = canary(20, 10, 1).webhook("pre", WebhookType::PreRollout);
    let mut sim = Sim::new(spec);
    // Nothing is outstanding before the first route: a takeover asks for nothing.
    assert!(sim.input(Input::TookOver).is_empty());
    let sent = sim.input(Input::Tick);
    let Some(Action::ApplyRoute(route)) = sent
        .iter()
        .find(|a| matches!(a, Action::ApplyRoute(_)))
        .cloned()
    else {
        panic!("{sent:?}")
    };

    // A route in flight: the same route under the same seq, its deadline unchanged.
    let (deadline, before) = (sim.st.next_tick_at_ms, sim.st.clone());
    sim.now += 1_000;
    let acts = sim.input(Input::TookOver);
    assert!(
        matches!(acts.as_slice(), [Action::ApplyRoute(again)] if *again == route),
        "{acts:?}"
    );
    assert_eq!(sim.st.next_tick_at_ms, deadline);
    assert_eq!(sim.st, before);
    sim.confirm_route();

    // A gate in flight: the same hooks again, under the same seq (the same idempotency key),
    // with its deadline unchanged and nothing else moved.
    let Wait::Gate { seq: Some(g), gate } = sim.st.wait else {
        panic!("{:?}", sim.st.wait)
    };
    let (deadline, before) = (sim.st.next_tick_at_ms, sim.st.clone());
    sim.now += 1_000;
    let acts = sim.input(Input::TookOver);
    assert!(
        matches!(acts.as_slice(), [Action::CheckGate { seq, gate: again, webhooks }]
            if *seq == g && *again == gate && webhooks.len() == 1),
        "{acts:?}"
    );
    assert_eq!(sim.st.next_tick_at_ms, deadline);
    assert_eq!(sim.st, before);
    sim.input(Input::GateResult {
        seq: g,
        gate,
        open: true,
    });
    assert_eq!(sim.st.phase, Phase::Progressing);

    // An analysis in flight: the same request, the same window.
    sim.confirm_route();
    sim.now = sim.st.next_tick_at_ms.expect("an interval to wait");
    let sent = sim.input(Input::Tick);
    let Some(Action::RequestAnalysis(first)) = sent
        .iter()
        .find(|a| matches!(a, Action::RequestAnalysis(_)))
        .cloned()
    else {
        panic!("{sent:?}")
    };
    sim.now += 5_000;
    let acts = sim.input(Input::TookOver);
    assert!(
        matches!(acts.as_slice(), [Action::RequestAnalysis(again)] if *again == first),
        "{acts:?} vs {first:?}"
    );
    let routes = sim.routes().len();
    sim.input(Input::Verdict(verdict(first.seq, Outcome::Pass)));
    assert!(
        !matches!(sim.st.wait, Wait::Verdict { .. }) && sim.routes().len() == routes + 1,
        "the answer to the re-sent request moves the rollout on: {:?}",
        sim.st.wait
    );
}

#[test]
fn gates_hold_and_open() {
    let spec = canary(20, 10, 2)
        .webhook("start", WebhookType::ConfirmRollout)
        .webhook("more", WebhookType::ConfirmTrafficIncrease)
        .webhook("ship", WebhookType::ConfirmPromotion)
        .webhook("pre", WebhookType::PreRollout)
        .webhook("post", WebhookType::PostRollout)
        .webhook("load", WebhookType::Rollout);
    let mut sim = Sim::new(spec.clone());
    sim.input(Input::Tick);
    // Confirm the initial route; the confirm-rollout gate is asked.
    let Wait::Route { seq, .. } = sim.st.wait else {
        panic!()
    };
    let acts = sim.input(Input::RouteConfirmed {
        seq,
        observed: ObservedSplit {
            canary_weight: 0,
            primary_weight: 100,
            mirror_percent: 0,
        },
    });
    assert!(acts.iter().any(|a| matches!(a, Action::CheckGate { gate: WebhookType::ConfirmRollout, webhooks, .. } if webhooks.len() == 1)));
    let Wait::Gate { seq: Some(g), .. } = sim.st.wait else {
        panic!()
    };
    sim.input(Input::GateResult {
        seq: g,
        gate: WebhookType::ConfirmRollout,
        open: false,
    });
    assert_eq!(sim.st.phase, Phase::Waiting);
    assert_eq!(
        sim.st.halted_since_ms, None,
        "a closed confirm gate is a hold, not a halt"
    );
    // Re-asked each interval; still closed for an hour: no deadline applies.
    for _ in 0..60 {
        sim.now = sim.st.next_tick_at_ms.expect("tick");
        sim.input(Input::Tick);
        let Wait::Gate { seq: Some(g), .. } = sim.st.wait else {
            panic!("{:?}", sim.st.wait)
        };
        sim.input(Input::GateResult {
            seq: g,
            gate: WebhookType::ConfirmRollout,
            open: false,
        });
    }
    assert_eq!(sim.st.phase, Phase::Waiting);
    // Approve opens it by hand, then everything else answers open.
    sim.command(Command::Approve)
        .expect("approve a confirm gate");
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    let gates: Vec<WebhookType> = sim
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::CheckGate { gate, .. } => Some(*gate),
            _ => None,
        })
        .collect();
    let increases = gates
        .iter()
        .filter(|g| **g == WebhookType::ConfirmTrafficIncrease)
        .count();
    assert_eq!(
        increases, 2,
        "one confirm-traffic-increase per weight increase (10, 20)"
    );
    assert!(gates.contains(&WebhookType::PreRollout));
    assert!(gates.contains(&WebhookType::ConfirmPromotion));
    assert!(sim.events().contains(&EventKind::WaitingPromotion));
    assert!(sim.actions.iter().any(|(_, a)| matches!(
        a,
        Action::RunHooks {
            hook: WebhookType::PostRollout,
            ..
        }
    )));
    let req = sim
        .actions
        .iter()
        .find_map(|(_, a)| match a {
            Action::RequestAnalysis(r) => Some(r.clone()),
            _ => None,
        })
        .expect("analysis");
    assert_eq!(
        req.webhooks.len(),
        1,
        "rollout webhooks travel with the analysis request"
    );
    assert_eq!(
        req.window_end_ms - req.window_start_ms,
        MIN,
        "window starts at confirmation"
    );

    // A closed traffic-increase gate is a hold, as in Flagger: no halt, no deadline, and the
    // weight never increases (more in `holds`).
    let mut sim = Sim::new(canary(20, 10, 2).webhook("more", WebhookType::ConfirmTrafficIncrease));
    sim.input(Input::Tick);
    sim.confirm_route();
    for _ in 0..120 {
        match sim.st.wait.clone() {
            Wait::Gate {
                gate,
                seq: Some(seq),
            } => {
                sim.input(Input::GateResult {
                    seq,
                    gate,
                    open: false,
                });
            }
            _ => {
                sim.now = sim.st.next_tick_at_ms.expect("a tick");
                sim.input(Input::Tick);
            }
        }
    }
    assert_eq!(sim.st.phase, Phase::Progressing);
    assert_eq!(sim.st.halted_since_ms, None);
    assert!(!sim.events().contains(&EventKind::Halted));
    assert_eq!(sim.weights(), vec![0], "weight never increased");
}

#[test]
fn confirm_promotion_closed_waits() {
    let mut sim = Sim::new(canary(20, 10, 2).webhook("ship", WebhookType::ConfirmPromotion));
    let mut ticks = 0;
    sim.input(Input::Tick);
    loop {
        match sim.st.wait.clone() {
            Wait::Gate {
                gate: WebhookType::ConfirmPromotion,
                seq: Some(seq),
            } => {
                sim.input(Input::GateResult {
                    seq,
                    gate: WebhookType::ConfirmPromotion,
                    open: false,
                });
                ticks += 1;
                if ticks > 30 {
                    break;
                }
            }
            Wait::Route { seq, .. } => {
                let r = sim.st.route.clone().expect("route");
                sim.input(Input::RouteConfirmed {
                    seq,
                    observed: ObservedSplit {
                        canary_weight: r.canary_weight,
                        primary_weight: r.primary_weight,
                        mirror_percent: 0,
                    },
                });
            }
            Wait::Verdict { seq, .. } => {
                sim.input(Input::Verdict(verdict(seq, Outcome::Pass)));
            }
            _ => {
                sim.now = sim.st.next_tick_at_ms.expect("tick");
                sim.input(Input::Tick);
            }
        }
    }
    assert_eq!(sim.st.phase, Phase::WaitingPromotion);
    assert_eq!(sim.weights(), vec![0, 10, 20]);
    sim.command(Command::Approve).expect("approve");
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
}

#[test]
fn route_ack_problems_halt_and_retry() {
    let mut sim = Sim::new(canary(20, 10, 2));
    sim.input(Input::Tick);
    let Wait::Route { seq, .. } = sim.st.wait else {
        panic!()
    };
    // The data plane reports a different split: not confirmed, halted.
    sim.input(Input::RouteConfirmed {
        seq,
        observed: ObservedSplit {
            canary_weight: 5,
            primary_weight: 95,
            mirror_percent: 0,
        },
    });
    assert!(!sim.st.route_confirmed);
    assert!(sim.st.halted_since_ms.is_some());
    sim.input(Input::RouteFailed {
        seq,
        reason: "envoy down".into(),
    });
    sim.now = sim.st.next_tick_at_ms.expect("tick");
    let acts = sim.input(Input::Tick);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::ApplyRoute(r) if r.seq == seq)),
        "route sent again"
    );
    // A stale ack is ignored.
    let d = sim
        .m
        .step(
            &sim.st,
            Input::RouteConfirmed {
                seq: seq + 100,
                observed: ObservedSplit {
                    canary_weight: 0,
                    primary_weight: 100,
                    mirror_percent: 0,
                },
            },
            Env {
                now_ms: sim.now,
                random: 0,
            },
        )
        .expect("ok");
    assert_eq!(d.ignored, Some("stale route ack"));
    assert_eq!(d.status, sim.st);
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.st.halted_since_ms, None);
}

#[test]
fn commands_invalid_in_phase_change_nothing() {
    let mut sim = Sim::new(canary(20, 10, 2));
    let before = sim.st.clone();
    assert_eq!(
        sim.command(Command::Resume),
        Err(CommandError::InvalidInPhase {
            command: "resume",
            phase: Phase::Initializing
        })
    );
    assert_eq!(
        sim.command(Command::Retry).map(|_| ()),
        Err(CommandError::InvalidInPhase {
            command: "retry",
            phase: Phase::Initializing
        })
    );
    assert_eq!(
        sim.command(Command::Approve).map(|_| ()),
        Err(CommandError::InvalidInPhase {
            command: "approve",
            phase: Phase::Initializing
        })
    );
    assert_eq!(sim.st, before);
    sim.run(Outcome::Pass, true);
    for c in [
        Command::Pause,
        Command::Resume,
        Command::Abort,
        Command::Promote { full: true },
        Command::Approve,
        Command::SetWeight(5),
    ] {
        let before = sim.st.clone();
        let err = sim.command(c).expect_err("invalid when succeeded");
        assert!(err.to_string().contains("Succeeded"), "{err}");
        assert_eq!(sim.st, before);
    }
    assert_eq!(
        sim.command(Command::SetWeight(101)).map(|_| ()),
        Err(CommandError::InvalidWeight(101))
    );
}

#[test]
fn pause_resume_abort_setweight() {
    let mut sim = Sim::new(canary(50, 10, 2));
    sim.input(Input::Tick);
    sim.confirm_route();
    assert_eq!(sim.st.phase, Phase::Progressing);
    sim.command(Command::Pause).expect("pause");
    assert_eq!(sim.st.phase, Phase::Paused);
    assert_eq!(sim.st.next_tick_at_ms, None);
    // Ticks do nothing while paused, however long.
    sim.now += 3_600_000;
    sim.input(Input::Tick);
    assert_eq!(sim.st.phase, Phase::Paused);
    assert_eq!(
        sim.command(Command::Pause).map(|_| ()),
        Err(CommandError::InvalidInPhase {
            command: "pause",
            phase: Phase::Paused
        })
    );
    // Hold at a manual weight.
    let acts = sim.command(Command::SetWeight(30)).expect("set weight");
    assert!(acts.iter().any(
        |a| matches!(a, Action::ApplyRoute(r) if r.canary_weight == 30 && r.primary_weight == 70)
    ));
    assert_eq!(sim.st.weight_hold, Some(30));
    sim.command(Command::Resume).expect("resume");
    assert_eq!(sim.st.phase, Phase::Progressing);
    assert_eq!(sim.st.weight_hold, None);
    assert!(
        matches!(&sim.st.route, Some(r) if r.canary_weight == 10),
        "back to the step's weight"
    );
    sim.command(Command::Abort).expect("abort");
    assert_eq!(sim.st.phase, Phase::Failed);
    assert!(sim.events().contains(&EventKind::Aborted));
    assert!(matches!(&sim.st.route, Some(r) if r.primary_weight == 100));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(sim.st.wait, Wait::Idle);
}

#[test]
fn steps_strategy_follows_the_list() {
    let spec = RolloutSpec::test().steps(vec![
        Step::SetWeight(5),
        Step::Pause(PauseStep {
            duration: Some(HumanDuration::from_secs(300)),
        }),
        Step::Analysis(AnalysisStep::default()),
        Step::Approval(ApprovalStep {}),
        Step::SetWeight(50),
        Step::Pause(PauseStep::default()),
    ]);
    let mut sim = Sim::new(spec);
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Progressing);
    assert_eq!(sim.st.wait, Wait::Approval);
    assert_eq!(sim.analyses(), 1);
    let waited = sim.now - sim.event_time(EventKind::Progressing);
    assert_eq!(waited, 5 * MIN + MIN, "5m pause then a 1m analysis window");
    sim.command(Command::Approve).expect("approve");
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.wait, Wait::Pause { until_ms: None });
    assert_eq!(sim.weights(), vec![0, 5, 50]);
    sim.now += 24 * 3_600_000;
    sim.input(Input::Tick);
    assert_eq!(
        sim.st.phase,
        Phase::Progressing,
        "an open-ended pause has no deadline"
    );
    sim.command(Command::Resume).expect("resume the pause step");
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.weights(), vec![0, 5, 50, 100]);
}

#[test]
fn promote_commands() {
    let mut sim = Sim::new(canary(50, 10, 2));
    sim.input(Input::Tick);
    sim.confirm_route();
    sim.command(Command::Promote { full: false })
        .expect("skip step");
    assert_eq!(sim.st.step, 1);
    sim.command(Command::Promote { full: true }).expect("full");
    assert_eq!(sim.st.phase, Phase::Promoting);
    sim.run(Outcome::Fail, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.weights(), vec![0, 10, 20, 100]);
}

#[test]
fn new_revision_restarts_the_run() {
    let spec = canary(50, 10, 2);
    let mut sim = Sim::new(spec.clone());
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    let mut next = spec.clone();
    next.canary.endpoints = vec!["127.0.0.1:9003".into()];
    sim.m = Machine::new(&next).expect("valid");
    sim.input(Input::SpecChanged { generation: 2 });
    assert_eq!(sim.st.phase, Phase::Initializing);
    assert_eq!(sim.st.step, 0, "the new run starts at its first step");
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.st.run, 2);
    assert_eq!(sim.st.generation, 2);
    let d = sim
        .m
        .step(
            &sim.st,
            Input::SpecChanged { generation: 1 },
            Env {
                now_ms: 0,
                random: 0,
            },
        )
        .expect("ok");
    assert!(d.ignored.is_some());
}

#[test]
fn status_round_trips_as_json() {
    let mut sim = Sim::new(canary(50, 10, 2).session_affinity("c", 60));
    sim.input(Input::Tick);
    sim.run(Outcome::Inconclusive, true);
    let json = serde_json::to_string(&sim.st).expect("serialize");
    let back: RolloutStatus = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, sim.st);
    for (_, a) in &sim.actions {
        let j = serde_json::to_string(a).expect("action serializes");
        let b: Action = serde_json::from_str(&j).expect("action deserializes");
        assert_eq!(&b, a);
    }
}

// ---- properties -----------------------------------------------------------------------------

/// What the random driver does next; "latest" means the outstanding request, if any.
#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    ConfirmRoute,
    FailRoute,
    Verdict(Outcome, bool),
    Gate(bool),
    Finalised,
    Command(Command),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        4 => Just(Outcome::Pass),
        2 => Just(Outcome::Fail),
        1 => Just(Outcome::Inconclusive),
        1 => Just(Outcome::Error),
    ];
    prop_oneof![
        6 => (1u64..200_000).prop_map(Op::Advance),
        6 => Just(Op::ConfirmRoute),
        1 => Just(Op::FailRoute),
        6 => (outcome, proptest::bool::weighted(0.05)).prop_map(|(o, f)| Op::Verdict(o, f)),
        3 => proptest::bool::weighted(0.7).prop_map(Op::Gate),
        2 => Just(Op::Finalised),
        1 => prop_oneof![
            Just(Command::Pause),
            Just(Command::Resume),
            Just(Command::Abort),
            Just(Command::Approve),
            Just(Command::Retry),
            (0u8..=100).prop_map(Command::SetWeight),
        ]
        .prop_map(Op::Command),
    ]
}

fn any_spec() -> impl Strategy<Value = RolloutSpec> {
    let base = (1u32..4, 1u64..5).prop_map(|(threshold, minutes)| {
        RolloutSpec::test()
            .threshold(threshold)
            .interval(HumanDuration::from_secs(minutes * 60))
            .progress_deadline(900)
    });
    let hooks = proptest::collection::vec(
        prop_oneof![
            Just(WebhookType::ConfirmRollout),
            Just(WebhookType::PreRollout),
            Just(WebhookType::ConfirmTrafficIncrease),
            Just(WebhookType::ConfirmPromotion),
            Just(WebhookType::Rollback),
        ],
        0..3,
    );
    (base, 0u8..7, 1u8..60, 1u8..=100, hooks, 1u8..=100).prop_map(
        |(s, kind, step, max, hooks, promo)| {
            let mut s = match kind {
                0 => s.step_weight(step).max_weight(max),
                1 => s.step_weights(&[1, 5, 25, 60]),
                2 => s.iterations(u32::from(step % 5) + 1),
                3 => s.iterations(u32::from(step % 5) + 1).mirror(Some(max)),
                4 => s.iterations(3).match_header("x-canary", "yes"),
                5 => s
                    .step_weight(step)
                    .max_weight(max)
                    .session_affinity("c", 100),
                _ => s.steps(vec![
                    Step::SetWeight(step),
                    Step::Analysis(AnalysisStep::default()),
                    Step::Approval(ApprovalStep {}),
                    Step::SetWeight(max),
                    Step::Pause(PauseStep {
                        duration: Some(HumanDuration::from_secs(60)),
                    }),
                    Step::Analysis(AnalysisStep::default()),
                ]),
            };
            s = s.step_weight_promotion(promo);
            for (i, h) in hooks.into_iter().enumerate() {
                s = s.webhook(&format!("h{i}"), h);
            }
            s
        },
    )
}

fn apply(sim: &mut Sim, op: &Op) -> Vec<Action> {
    let input = match (op, sim.st.wait.clone()) {
        (Op::Advance(ms), _) => {
            sim.now += ms;
            Input::Tick
        }
        (Op::ConfirmRoute, Wait::Route { seq, .. }) => {
            let r = sim.st.route.clone().expect("route");
            Input::RouteConfirmed {
                seq,
                observed: ObservedSplit {
                    canary_weight: r.canary_weight,
                    primary_weight: r.primary_weight,
                    mirror_percent: r.mirror_percent,
                },
            }
        }
        (Op::FailRoute, Wait::Route { seq, .. }) => Input::RouteFailed {
            seq,
            reason: "x".into(),
        },
        (Op::Verdict(o, fail_fast), Wait::Verdict { seq, .. }) => {
            let mut v = verdict(seq, *o);
            v.fail_fast = *fail_fast && *o == Outcome::Fail;
            Input::Verdict(v)
        }
        (
            Op::Gate(open),
            Wait::Gate {
                gate,
                seq: Some(seq),
            },
        ) => Input::GateResult {
            seq,
            gate,
            open: *open,
        },
        (Op::Finalised, Wait::Finalise { seq, .. }) => Input::Finalised { seq },
        (Op::Command(c), _) => Input::Command(*c),
        // Answers to nothing outstanding are stale: they must be ignored.
        (_, _) => Input::Verdict(verdict(sim.st.seq + 1000, Outcome::Pass)),
    };
    let env = sim.env();
    match sim.m.step(&sim.st, input, env) {
        Ok(d) => {
            sim.st = d.status;
            d.actions
        }
        Err(_) => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Weights are always within 0..=100 and sum to 100, whatever happens.
    #[test]
    fn weights_stay_in_range(spec in any_spec(), ops in proptest::collection::vec(op(), 1..300)) {
        let mut sim = Sim::new(spec);
        for op in &ops {
            for a in apply(&mut sim, op) {
                if let Action::ApplyRoute(r) = a {
                    prop_assert!(r.canary_weight <= 100);
                    prop_assert_eq!(u16::from(r.canary_weight) + u16::from(r.primary_weight), 100);
                    prop_assert!(r.mirror_percent <= 100);
                }
            }
            prop_assert!(sim.st.canary_weight <= 100);
        }
    }

    /// Without manual promotion, no rollout is promoted unless every analysed step of its plan
    /// passed in this run, and reaching `threshold` failed checks always rolls back to 100 %
    /// primary.
    #[test]
    fn no_promotion_without_passing_verdicts(spec in any_spec(), ops in proptest::collection::vec(op(), 1..400)) {
        let threshold = spec.analysis.threshold();
        let mut sim = Sim::new(spec);
        let analysed: Vec<usize> = sim.m.plan().steps().enumerate().filter(|(_, s)| s.analysis).map(|(i, _)| i).collect();
        for op in &ops {
            let before = sim.st.phase;
            let acts = apply(&mut sim, op);
            let promoting = matches!(sim.st.phase, Phase::Promoting | Phase::Finalising | Phase::Succeeded)
                && !matches!(before, Phase::Promoting | Phase::Finalising | Phase::Succeeded);
            if promoting {
                for i in &analysed {
                    prop_assert!(sim.st.passed_steps.contains(i), "promoted without step {} passing: {:?}", i, sim.st);
                }
            }
            if sim.st.failed_checks >= threshold {
                prop_assert_eq!(sim.st.phase, Phase::Failed);
                let route = sim.st.route.clone().expect("a route");
                prop_assert_eq!((route.canary_weight, route.primary_weight, route.mirror_percent), (0, 100, 0));
                prop_assert!(route.matches.is_empty());
            }
            if before != Phase::Failed && sim.st.phase == Phase::Failed {
                prop_assert!(acts.iter().any(|a| matches!(a, Action::Emit(e) if e.kind == EventKind::RolledBack)));
            }
        }
    }

    /// The status always survives a JSON round trip (it lives in KV).
    #[test]
    fn status_serializes(spec in any_spec(), ops in proptest::collection::vec(op(), 1..100)) {
        let mut sim = Sim::new(spec);
        for op in &ops {
            apply(&mut sim, op);
        }
        let json = serde_json::to_string(&sim.st).expect("serialize");
        let back: RolloutStatus = serde_json::from_str(&json).expect("deserialize");
        prop_assert_eq!(back, sim.st);
    }
}

/// Drives the simulation to the first outstanding verdict and returns its seq.
fn first_verdict_seq(sim: &mut Sim) -> u64 {
    sim.input(Input::Tick);
    loop {
        match sim.st.wait.clone() {
            Wait::Verdict { seq, .. } => return seq,
            Wait::Route { seq, .. } => {
                let r = sim.st.route.clone().expect("route");
                sim.input(Input::RouteConfirmed {
                    seq,
                    observed: ObservedSplit {
                        canary_weight: r.canary_weight,
                        primary_weight: r.primary_weight,
                        mirror_percent: 0,
                    },
                });
            }
            _ => {
                sim.now = sim.st.next_tick_at_ms.expect("tick");
                sim.input(Input::Tick);
            }
        }
    }
}

#[test]
fn decisive_pass_promotes_early_only_when_the_spec_allows() {
    for allowed in [true, false] {
        let mut spec = canary(50, 10, 5);
        spec.analysis.early_promotion = allowed;
        let mut sim = Sim::new(spec);
        let seq = first_verdict_seq(&mut sim);
        assert_eq!(sim.st.step, 0);
        let mut v = verdict(seq, Outcome::Pass);
        v.early_promote = true;
        sim.input(Input::Verdict(v));
        if allowed {
            assert_eq!(sim.st.phase, Phase::Promoting, "skips steps 2..5");
            assert!(matches!(sim.routes().last(), Some(r) if r.canary_weight == 100));
        } else {
            assert_eq!(sim.st.phase, Phase::Progressing);
            assert_eq!(sim.st.step, 1, "walks to the next step as usual");
        }
    }
    // A plain pass never promotes early, even when allowed.
    let mut spec = canary(50, 10, 5);
    spec.analysis.early_promotion = true;
    let mut sim = Sim::new(spec);
    let seq = first_verdict_seq(&mut sim);
    sim.input(Input::Verdict(verdict(seq, Outcome::Pass)));
    assert_eq!(sim.st.phase, Phase::Progressing);
    assert_eq!(sim.st.step, 1);
}

#[test]
fn early_promotion_still_asks_the_confirm_promotion_gate() {
    let mut spec = canary(50, 10, 5).webhook("ship", WebhookType::ConfirmPromotion);
    spec.analysis.early_promotion = true;
    let mut sim = Sim::new(spec);
    let seq = first_verdict_seq(&mut sim);
    let mut v = verdict(seq, Outcome::Pass);
    v.early_promote = true;
    sim.input(Input::Verdict(v));
    assert_eq!(sim.st.phase, Phase::WaitingPromotion);
}

/// Workload mode: the controller's operations in Flagger's order.
mod workload {
    use super::*;
    use crate::machine::WORKLOAD_POLL_MS;
    use crate::spec::{ServiceSpec, TargetRef, WorkloadKind};

    fn spec(primary_revision: &str, canary_revision: &str) -> RolloutSpec {
        let mut spec = canary(30, 10, 2);
        spec.target_ref = Some(TargetRef {
            api_version: "apps/v1".into(),
            kind: WorkloadKind::Deployment,
            name: "podinfo".into(),
        });
        spec.service = Some(ServiceSpec {
            port: 9898,
            ..ServiceSpec::default()
        });
        spec.primary.revision = Some(primary_revision.into());
        spec.canary.revision = Some(canary_revision.into());
        spec
    }

    /// The actions that matter here, as short names in order.
    fn trail(sim: &Sim) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, a) in &sim.actions {
            let s = match a {
                Action::ApplyRoute(r) => format!("route {}", r.canary_weight),
                Action::Workload { op, .. } => op.as_str().to_owned(),
                Action::Finalise { .. } => "finalise".to_owned(),
                _ => continue,
            };
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        out
    }

    #[test]
    fn promotion_updates_the_primary_before_routing_back_to_it() {
        let mut sim = Sim::new(spec("a", "b"));
        sim.run(Outcome::Pass, true);
        assert_eq!(sim.st.phase, Phase::Succeeded);
        assert_eq!(
            trail(&sim),
            [
                "route 0",
                "scale-canary-up",
                "route 10",
                "route 20",
                "route 30",
                "promote-primary",
                "route 0",
                "scale-canary-down",
            ]
        );
        // No role swap: the canary never takes all the traffic.
        assert!(sim.routes().iter().all(|r| r.canary_weight < 100));
    }

    #[test]
    fn step_weight_promotion_moves_traffic_back_to_the_updated_primary_in_steps() {
        let mut s = spec("a", "b");
        s.analysis.step_weight_promotion = Some(20);
        let mut sim = Sim::new(s);
        sim.run(Outcome::Pass, true);
        assert_eq!(sim.st.phase, Phase::Succeeded);
        assert_eq!(
            trail(&sim),
            [
                "route 0",
                "scale-canary-up",
                "route 10",
                "route 20",
                "route 30",
                "promote-primary",
                "route 10",
                "route 0",
                "scale-canary-down",
            ]
        );
        // One interval between the steps back.
        let back: Vec<u64> = sim
            .actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::ApplyRoute(r) if r.canary_weight == 10 || r.canary_weight == 0 => Some(*t),
                _ => None,
            })
            .collect();
        let (t10, t0) = (back[back.len() - 2], back[back.len() - 1]);
        assert!(t0 - t10 >= MIN, "{t10} → {t0}");
    }

    #[test]
    fn a_target_the_primary_already_runs_initialises_without_a_run() {
        let mut sim = Sim::new(spec("a", "a"));
        sim.run(Outcome::Pass, true);
        assert_eq!(sim.st.phase, Phase::Initialized);
        assert_eq!(trail(&sim), ["route 0"]);
        assert_eq!(sim.st.run, 0);
    }

    #[test]
    fn a_canary_that_never_becomes_ready_fails_at_the_progress_deadline() {
        let mut s = spec("a", "b");
        s.progress_deadline_seconds = Some(60);
        let mut sim = Sim::new(s);
        sim.input(Input::Tick);
        sim.confirm_route();
        for _ in 0..100 {
            if sim.st.phase.is_terminal() {
                break;
            }
            let Wait::Workload { op, seq, .. } = sim.st.wait else {
                panic!("expected a workload operation, got {:?}", sim.st.wait);
            };
            assert_eq!(op, WorkloadOp::ScaleCanaryUp);
            sim.input(Input::WorkloadDone {
                seq,
                done: false,
                observed: "0/2 replicas ready".into(),
            });
            assert!(
                sim.st
                    .halt_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("0/2 replicas ready"))
            );
            sim.now = sim.st.next_tick_at_ms.expect("asked again");
            sim.input(Input::Tick);
        }
        assert_eq!(sim.st.phase, Phase::Failed);
        assert!(sim.now - T0 >= 60_000 && sim.now - T0 < 60_000 + WORKLOAD_POLL_MS + 1);
        // Back to the primary, the canary to zero; the primary was never touched.
        sim.run(Outcome::Pass, true);
        let trail = trail(&sim);
        assert_eq!(trail.last().map(String::as_str), Some("scale-canary-down"));
        assert!(!trail.iter().any(|t| t == "promote-primary"));
    }

    #[test]
    fn a_failing_canary_rolls_back_without_touching_the_primary() {
        let mut sim = Sim::new(spec("a", "b"));
        sim.run(Outcome::Fail, true);
        assert_eq!(sim.st.phase, Phase::Failed);
        assert_eq!(
            trail(&sim),
            [
                "route 0",
                "scale-canary-up",
                "route 10",
                "route 0",
                "scale-canary-down"
            ]
        );
    }

    #[test]
    fn skip_analysis_promotes_only_a_ready_canary() {
        let mut s = spec("a", "b");
        s.skip_analysis = true;
        let mut sim = Sim::new(s);
        sim.run(Outcome::Fail, true);
        assert_eq!(sim.st.phase, Phase::Succeeded);
        assert_eq!(
            trail(&sim),
            // The primary already serves 100 %: no route to send after its promotion.
            [
                "route 0",
                "scale-canary-up",
                "promote-primary",
                "scale-canary-down"
            ]
        );
        assert_eq!(sim.analyses(), 0);
    }

    /// Answers the one outstanding route or workload operation as done.
    fn answer(sim: &mut Sim) {
        match sim.st.wait.clone() {
            Wait::Route { .. } => {
                sim.confirm_route();
            }
            Wait::Workload { seq, .. } => {
                sim.input(Input::WorkloadDone {
                    seq,
                    done: true,
                    observed: "ready".into(),
                });
            }
            w => panic!("nothing to answer: {w:?}"),
        }
    }

    #[test]
    fn a_new_revision_mid_run_restarts_from_a_ready_canary() {
        let mut sim = Sim::new(spec("a", "b"));
        sim.input(Input::Tick);
        for _ in 0..3 {
            answer(&mut sim); // route 0, scale-canary-up, route 10
        }
        assert_eq!(
            (sim.st.phase, sim.st.canary_weight),
            (Phase::Progressing, 10)
        );
        sim.m = Machine::new(&spec("a", "c")).expect("valid");
        sim.input(Input::SpecChanged { generation: 2 });
        assert_eq!(sim.st.phase, Phase::Initializing);
        assert_eq!(sim.st.route.as_ref().map(|r| r.canary_weight), Some(0));
        sim.run(Outcome::Pass, true);
        assert_eq!((sim.st.phase, sim.st.run), (Phase::Succeeded, 2));
        let ups = trail(&sim)
            .iter()
            .filter(|t| *t == "scale-canary-up")
            .count();
        assert_eq!(ups, 2, "the new revision's canary is made ready again");
    }
}

/// Answers routes and verdicts (passing) until the confirm-promotion gate is first asked.
fn to_confirm_promotion(sim: &mut Sim) -> u64 {
    sim.input(Input::Tick);
    for _ in 0..1_000 {
        match sim.st.wait.clone() {
            Wait::Gate {
                gate: WebhookType::ConfirmPromotion,
                seq: Some(seq),
            } => return seq,
            Wait::Route { seq, .. } => {
                let r = sim.st.route.clone().expect("route");
                sim.input(Input::RouteConfirmed {
                    seq,
                    observed: ObservedSplit {
                        canary_weight: r.canary_weight,
                        primary_weight: r.primary_weight,
                        mirror_percent: 0,
                    },
                });
            }
            Wait::Verdict { seq, .. } => {
                sim.input(Input::Verdict(verdict(seq, Outcome::Pass)));
            }
            _ => {
                sim.now = sim.st.next_tick_at_ms.expect("tick");
                sim.input(Input::Tick);
            }
        }
    }
    panic!("confirm-promotion never asked: {:?}", sim.st);
}

/// One interval held at max weight: the tick requests an analysis at the current weight.
fn held_interval_analysis(sim: &mut Sim) -> AnalysisRequest {
    assert_eq!(sim.st.wait, Wait::Interval, "observing the held canary");
    sim.now = sim.st.next_tick_at_ms.expect("tick");
    let acts = sim.input(Input::Tick);
    assert_eq!(sim.st.phase, Phase::WaitingPromotion);
    acts.into_iter()
        .find_map(|a| match a {
            Action::RequestAnalysis(r) => Some(r),
            _ => None,
        })
        .expect("an analysis each interval while the gate is closed")
}

fn close_gate(sim: &mut Sim, seq: u64) {
    sim.input(Input::GateResult {
        seq,
        gate: WebhookType::ConfirmPromotion,
        open: false,
    });
    assert_eq!(sim.st.phase, Phase::WaitingPromotion);
}

#[test]
fn confirm_promotion_closed_keeps_analysing_at_max_weight() {
    let mut sim = Sim::new(canary(20, 10, 3).webhook("ship", WebhookType::ConfirmPromotion));
    let gate = to_confirm_promotion(&mut sim);
    close_gate(&mut sim, gate);
    let before = sim.analyses();
    for i in 0..5 {
        let req = held_interval_analysis(&mut sim);
        assert_eq!(req.canary_weight, 20, "analysed at max weight");
        assert_eq!(req.window_end_ms - req.window_start_ms, MIN);
        sim.input(Input::Verdict(verdict(req.seq, Outcome::Pass)));
        // A pass alone does not promote: the gate is asked again.
        let Wait::Gate {
            gate: WebhookType::ConfirmPromotion,
            seq: Some(g),
        } = sim.st.wait
        else {
            panic!("interval {i}: gate not asked: {:?}", sim.st.wait)
        };
        close_gate(&mut sim, g);
    }
    assert_eq!(sim.analyses() - before, 5);
    assert_eq!(sim.st.halted_since_ms, None, "a closed gate is a hold");
    assert_eq!(sim.weights(), vec![0, 10, 20]);
}

#[test]
fn confirm_promotion_closed_failing_checks_roll_back_at_threshold() {
    let mut sim = Sim::new(canary(20, 10, 3).webhook("ship", WebhookType::ConfirmPromotion));
    let gate = to_confirm_promotion(&mut sim);
    close_gate(&mut sim, gate);
    for n in 1..=3 {
        let req = held_interval_analysis(&mut sim);
        let acts = sim.input(Input::Verdict(verdict(req.seq, Outcome::Fail)));
        assert_eq!(sim.st.failed_checks, n);
        assert!(
            !acts.iter().any(|a| matches!(a, Action::CheckGate { .. })),
            "a failed check does not ask the gate"
        );
    }
    assert_eq!(sim.st.phase, Phase::Failed);
    assert!(matches!(sim.routes().last(), Some(r) if r.primary_weight == 100));

    // A rollback webhook answering 2xx during the hold rolls back at once.
    let mut sim = Sim::new(canary(20, 10, 3).webhook("ship", WebhookType::ConfirmPromotion));
    let gate = to_confirm_promotion(&mut sim);
    close_gate(&mut sim, gate);
    let req = held_interval_analysis(&mut sim);
    let mut v = verdict(req.seq, Outcome::Pass);
    v.rollback_requested = true;
    sim.input(Input::Verdict(v));
    assert_eq!(sim.st.phase, Phase::Failed);
}

#[test]
fn confirm_promotion_opening_after_held_analyses_promotes() {
    let mut sim = Sim::new(canary(20, 10, 3).webhook("ship", WebhookType::ConfirmPromotion));
    let gate = to_confirm_promotion(&mut sim);
    close_gate(&mut sim, gate);
    let req = held_interval_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(req.seq, Outcome::Fail)));
    let req = held_interval_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(req.seq, Outcome::Pass)));
    let Wait::Gate { seq: Some(g), gate } = sim.st.wait else {
        panic!("{:?}", sim.st.wait)
    };
    sim.input(Input::GateResult {
        seq: g,
        gate,
        open: true,
    });
    assert_eq!(sim.st.phase, Phase::Promoting);
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);

    // Approve by command while the held canary is observed (no gate outstanding) promotes too.
    let mut sim = Sim::new(canary(20, 10, 3).webhook("ship", WebhookType::ConfirmPromotion));
    let gate = to_confirm_promotion(&mut sim);
    close_gate(&mut sim, gate);
    assert_eq!(sim.st.wait, Wait::Interval);
    sim.command(Command::Approve).expect("approve while held");
    assert_eq!(sim.st.phase, Phase::Promoting);
}

/// Drives `sim` to its next analysis request (routes confirmed, time advanced to each tick).
fn next_analysis(sim: &mut Sim) -> AnalysisRequest {
    for _ in 0..1_000 {
        match sim.st.wait.clone() {
            Wait::Verdict { .. } => {
                let found = sim.actions.iter().rev().find_map(|(_, a)| match a {
                    Action::RequestAnalysis(r) => Some(r.clone()),
                    _ => None,
                });
                return found.expect("the outstanding request");
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
    panic!("no analysis requested: {:?}", sim.st);
}

#[test]
fn windows_tile_a_step_even_when_verdicts_take_time() {
    // The analyzer takes 7 s to answer each request; the next window still starts where the
    // last one ended, so the 7 s are judged too.
    let mut sim = Sim::new(canary(50, 10, 5));
    let first = next_analysis(&mut sim);
    sim.now += 7_000;
    sim.input(Input::Verdict(verdict(first.seq, Outcome::Fail)));
    let second = next_analysis(&mut sim);
    assert_eq!(second.step, first.step, "same step after a failed check");
    assert_eq!(
        second.window_start_ms, first.window_end_ms,
        "the next window starts where the failed one ended"
    );
    assert_eq!(second.window_end_ms, first.window_end_ms + 7_000 + MIN);

    // An unmeasured window (the backend erred) is judged again from where it started.
    sim.now += 2_000;
    sim.input(Input::Verdict(verdict(second.seq, Outcome::Error)));
    let third = next_analysis(&mut sim);
    assert_eq!(third.window_start_ms, second.window_start_ms);

    // A pass moves to the next weight: its window starts at that weight's confirmation.
    sim.input(Input::Verdict(verdict(third.seq, Outcome::Pass)));
    assert!(
        matches!(sim.st.wait, Wait::Route { .. }),
        "{:?}",
        sim.st.wait
    );
    sim.now += 3_000;
    let confirmed_at = sim.now;
    let fourth = next_analysis(&mut sim);
    assert_eq!(fourth.canary_weight, 20);
    assert_eq!(fourth.window_start_ms, confirmed_at);
}

#[test]
fn windows_tile_the_iterations_of_one_split() {
    // A/B testing: every iteration judges the same split; slow verdicts leave no gap.
    let mut sim = Sim::new(
        RolloutSpec::test()
            .interval(HumanDuration::from_secs(60))
            .threshold(3)
            .iterations(3)
            .match_header("x-canary", "always"),
    );
    let mut last: Option<AnalysisRequest> = None;
    for _ in 0..3 {
        let req = next_analysis(&mut sim);
        if let Some(prev) = &last {
            assert_eq!(
                req.window_start_ms, prev.window_end_ms,
                "{req:?} after {prev:?}"
            );
        }
        sim.now += 4_000;
        sim.input(Input::Verdict(verdict(req.seq, Outcome::Pass)));
        last = Some(req);
    }
}

#[test]
fn a_rollback_announces_the_split_it_asks_for() {
    let mut sim = Sim::new(canary(50, 10, 1));
    let req = next_analysis(&mut sim);
    sim.input(Input::Verdict(verdict(req.seq, Outcome::Pass)));
    let req = next_analysis(&mut sim);
    assert_eq!(req.canary_weight, 20);
    let acts = sim.input(Input::Verdict(verdict(req.seq, Outcome::Fail)));
    let event = acts
        .iter()
        .find_map(|a| match a {
            Action::Emit(e) if e.kind == EventKind::RolledBack => Some(e.clone()),
            _ => None,
        })
        .expect("a rolled-back event");
    assert_eq!(
        event.details.get("canaryWeight").map(String::as_str),
        Some("0")
    );
    assert_eq!(event.step, 1, "where it failed");
}

#[test]
fn a_long_hook_gets_its_own_timeout_before_no_answer_halts() {
    // A ten-minute pre-rollout test: the gate's answer is waited for ten minutes and a margin,
    // not the usual answer timeout.
    let mut spec = canary(50, 10, 2).webhook("load-test", WebhookType::PreRollout);
    spec.analysis.webhooks[0].timeout = Some(HumanDuration::from_secs(600));
    let mut sim = Sim::new(spec);
    sim.input(Input::Tick);
    for _ in 0..10 {
        if let Wait::Gate {
            gate: WebhookType::PreRollout,
            seq: Some(_),
        } = sim.st.wait
        {
            break;
        }
        if let Wait::Route { .. } = sim.st.wait {
            sim.confirm_route();
        } else {
            sim.now = sim.st.next_tick_at_ms.expect("a tick");
            sim.input(Input::Tick);
        }
    }
    let Wait::Gate {
        gate: WebhookType::PreRollout,
        seq: Some(seq),
    } = sim.st.wait
    else {
        panic!("pre-rollout asked: {:?}", sim.st.wait)
    };
    let asked = sim.now;
    assert_eq!(
        sim.st.next_tick_at_ms,
        Some(asked + 600_000 + super::HOOK_ANSWER_MARGIN_MS)
    );
    // Nine minutes in: still waiting, no halt.
    sim.now = asked + 540_000;
    sim.input(Input::Tick);
    assert!(sim.st.halted_since_ms.is_none(), "{:?}", sim.st.halt_reason);
    // The answer after nine and a half minutes is taken.
    sim.now = asked + 570_000;
    sim.input(Input::GateResult {
        seq,
        gate: WebhookType::PreRollout,
        open: true,
    });
    assert!(sim.st.halted_since_ms.is_none());
    assert!(
        matches!(sim.st.wait, Wait::Route { .. }),
        "{:?}",
        sim.st.wait
    );
}

#[test]
fn a_primary_cookie_rides_with_the_canary_cookie_for_one_interval() {
    let mut spec = canary(20, 10, 2).session_affinity("canary-cookie", 600);
    if let Some(sa) = spec.analysis.session_affinity.as_mut() {
        sa.primary_cookie_name = Some("primary-cookie".into());
    }
    let mut sim = Sim::new(spec);
    sim.run(Outcome::Pass, true);
    let routes = sim.routes();
    let during: Vec<_> = routes
        .iter()
        .filter_map(|r| r.session_affinity.as_ref())
        .filter(|a| a.max_age_seconds > 0)
        .collect();
    assert!(!during.is_empty(), "{routes:?}");
    for a in during {
        assert_eq!(a.primary_cookie_name.as_deref(), Some("primary-cookie"));
        assert_eq!(a.primary_max_age_seconds, 60, "one analysis interval");
    }
    // The run's end expires the canary cookie and hands out no primary cookie.
    let last = routes
        .last()
        .and_then(|r| r.session_affinity.clone())
        .expect("the expiring route");
    assert_eq!(last.max_age_seconds, -1);
    assert_eq!(last.primary_cookie_name, None);
}

/// Issue 15, case 5: not enough evidence is not a pass. Passes on `thresholdRange` alone while
/// the judge is undecided walk the steps, but the walk's end holds for `inconclusiveHold`,
/// analysed every interval, and then follows `onInconclusive`.
mod undecided {
    use super::*;
    use crate::spec::OnInconclusive;

    fn undecided(seq: u64) -> Verdict {
        Verdict {
            undecided: true,
            ..verdict(seq, Outcome::Pass)
        }
    }

    fn spec(choice: Option<OnInconclusive>) -> RolloutSpec {
        let mut spec = canary(30, 10, 2);
        spec.analysis.on_inconclusive = choice;
        spec.analysis.inconclusive_hold = Some(HumanDuration::from_secs(300));
        spec
    }

    /// When the last analysis of the walk came in, and when the rollout left that step.
    fn last_step_span(sim: &Sim) -> (u64, u64) {
        let last = sim
            .actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::RequestAnalysis(r) if r.step == 2))
            .map(|(t, _)| *t)
            .collect::<Vec<_>>();
        (last[0], *last.last().expect("analysed"))
    }

    #[test]
    fn the_default_rolls_back_after_the_hold() {
        let mut sim = Sim::new(spec(None));
        sim.run_answering(Outcome::Pass, true, |_, seq| undecided(seq));
        assert_eq!(sim.st.phase, Phase::Failed);
        assert_eq!(
            sim.weights(),
            vec![0, 10, 20, 30, 0],
            "walked every step, then back"
        );
        let (first, last) = last_step_span(&sim);
        assert_eq!(
            last - first,
            300_000,
            "held for inconclusiveHold, a look a minute"
        );
        assert!(
            sim.st.message.contains("inconclusiveHold"),
            "{}",
            sim.st.message
        );
        assert!(!sim.events().contains(&EventKind::Promoting));
    }

    #[test]
    fn promote_promotes_after_the_hold() {
        let mut sim = Sim::new(spec(Some(OnInconclusive::Promote)));
        sim.run_answering(Outcome::Pass, true, |_, seq| undecided(seq));
        assert_eq!(sim.st.phase, Phase::Succeeded);
        let (first, last) = last_step_span(&sim);
        assert_eq!(last - first, 300_000);
        assert_eq!(sim.weights(), vec![0, 10, 20, 30, 100]);
    }

    /// The hold is not a halt toward the progress deadline: a hold longer than the deadline
    /// still ends as the spec chose.
    #[test]
    fn the_hold_outlasts_the_progress_deadline() {
        let mut spec = spec(Some(OnInconclusive::Promote));
        spec.analysis.inconclusive_hold = Some(HumanDuration::from_secs(3_600));
        spec.progress_deadline_seconds = Some(600);
        let mut sim = Sim::new(spec);
        sim.run_answering(Outcome::Pass, true, |_, seq| undecided(seq));
        assert_eq!(sim.st.phase, Phase::Succeeded);
        assert_eq!(sim.st.halted_since_ms, None);
    }

    /// A decision during the hold ends it: the judge's pass promotes at once, its fail counts.
    #[test]
    fn a_decided_pass_during_the_hold_promotes() {
        let mut sim = Sim::new(spec(None));
        let mut at_last_step = 0;
        sim.run_answering(Outcome::Pass, true, |sim, seq| {
            if sim.st.step == 2 {
                at_last_step += 1;
            }
            if at_last_step >= 3 {
                verdict(seq, Outcome::Pass)
            } else {
                undecided(seq)
            }
        });
        assert_eq!(sim.st.phase, Phase::Succeeded);
        let (first, last) = last_step_span(&sim);
        assert_eq!(last - first, 120_000, "the third look decided");
    }

    /// Blue/green and A/B (iterations) and a closed confirm-promotion gate end their walks the
    /// same way.
    #[test]
    fn waiting_promotion_holds_too() {
        let spec = spec(None).webhook("ship", WebhookType::ConfirmPromotion);
        let mut sim = Sim::new(spec);
        sim.run_answering(Outcome::Pass, false, |_, seq| undecided(seq));
        assert_eq!(sim.st.phase, Phase::Failed, "{:?}", sim.st.message);
    }

    /// Steps before the last are passed on thresholdRange as before: only the end holds.
    #[test]
    fn earlier_steps_are_not_held() {
        let mut sim = Sim::new(spec(None));
        sim.run_answering(Outcome::Pass, true, |_, seq| undecided(seq));
        let per_step = |step| {
            sim.actions
                .iter()
                .filter(|(_, a)| matches!(a, Action::RequestAnalysis(r) if r.step == step))
                .count()
        };
        assert_eq!((per_step(0), per_step(1)), (1, 1));
        assert_eq!(per_step(2), 6, "the first look and five during the hold");
    }
}

#[test]
fn the_status_says_when_the_phase_last_changed() {
    let mut sim = Sim::new(canary(20, 10, 1));
    assert_eq!(sim.st.phase_since_ms, None);
    sim.input(Input::Tick);
    let entered = sim.st.phase_since_ms.expect("a phase entered");
    assert_eq!(entered, sim.now);
    let phase = sim.st.phase;
    // Time passes in the same phase (the route is not yet due again): the time stays.
    sim.now += 5_000;
    sim.input(Input::Tick);
    assert_eq!(sim.st.phase, phase);
    assert_eq!(sim.st.phase_since_ms, Some(entered));
    // The route confirmed moves the rollout on: a new phase, a new time.
    sim.now += 1_000;
    sim.confirm_route();
    assert_ne!(sim.st.phase, phase);
    assert_eq!(sim.st.phase_since_ms, Some(sim.now));
}
