//! The machine over folded multi-cluster verdicts ([`crate::clusters::fold_verdicts`], policy
//! `all`): both clusters healthy promotes; one cluster's failing canary rolls back; a cluster
//! that does not answer halts the walk where it is and never promotes (until the progress
//! deadline rolls it back).

use super::*;
use crate::clusters::{ClusterPolicy, fold_verdicts};

/// The folded verdict for `seq` with eu answering `eu` and us answering `us`.
fn folded(seq: u64, eu: Option<Outcome>, us: Option<Outcome>) -> Verdict {
    let eu = eu.map(|o| verdict(seq, o));
    let us = us.map(|o| verdict(seq, o));
    fold_verdicts(ClusterPolicy::All, seq, &[("eu", eu), ("us", us)])
}

#[test]
fn both_clusters_passing_promotes() {
    let mut sim = Sim::new(canary(50, 10, 2));
    sim.run_answering(Outcome::Pass, true, |_, seq| {
        folded(seq, Some(Outcome::Pass), Some(Outcome::Pass))
    });
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.weights(), vec![0, 10, 20, 30, 40, 50, 100]);
}

#[test]
fn one_clusters_failing_canary_rolls_back_and_is_named() {
    let mut sim = Sim::new(canary(50, 10, 2));
    sim.run_answering(Outcome::Pass, true, |sim, seq| {
        let us = if sim.st.canary_weight >= 30 {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        folded(seq, Some(Outcome::Pass), Some(us))
    });
    assert_eq!(sim.st.phase, Phase::Failed);
    let last = sim.routes().pop().expect("route");
    assert_eq!((last.canary_weight, last.primary_weight), (0, 100));
    assert!(!sim.weights().contains(&100), "{:?}", sim.weights());
    let summary = sim.st.last_verdict.clone().expect("a verdict");
    assert!(format!("{summary:?}").contains("us/"), "{summary:?}");
}

#[test]
fn a_cluster_without_answers_halts_and_never_promotes() {
    let mut sim = Sim::new(canary(50, 10, 2));
    let mut answered = 0;
    sim.run_answering(Outcome::Pass, true, |sim, seq| {
        answered += 1;
        assert!(
            answered < 200,
            "still analysing at {}",
            sim.st.canary_weight
        );
        let us = (sim.st.canary_weight < 20).then_some(Outcome::Pass);
        folded(seq, Some(Outcome::Pass), us)
    });
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(sim.weights().iter().max(), Some(&20), "{:?}", sim.weights());
}

/// A canary over eu then us (policy `waves`).
fn waves(max: u8, step: u8, threshold: u32) -> RolloutSpec {
    let mut spec = canary(max, step, threshold).clusters(&[("eu", &["edge"]), ("us", &["edge"])]);
    spec.cluster_policy = Some(ClusterPolicy::Waves);
    spec
}

/// Each route asked for, as (wave, canary weight), repeats folded.
fn wave_trail(sim: &Sim) -> Vec<(Option<usize>, u8)> {
    let mut out = Vec::new();
    for r in sim.routes() {
        if out.last() != Some(&(r.wave, r.canary_weight)) {
            out.push((r.wave, r.canary_weight));
        }
    }
    out
}

#[test]
fn waves_promote_one_cluster_then_walk_the_next_from_its_first_step() {
    let mut sim = Sim::new(waves(30, 10, 2));
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.st.wave, 1);
    assert_eq!(
        wave_trail(&sim),
        [
            (None, 0),
            (Some(0), 10),
            (Some(0), 20),
            (Some(0), 30),
            (Some(0), 100),
            (Some(1), 10),
            (Some(1), 20),
            (Some(1), 30),
            (Some(1), 100),
        ]
    );
    // While us walks, eu keeps serving the canary fully; while eu walked, us served the primary.
    for r in sim.routes() {
        match r.wave {
            Some(1) => assert_eq!(r.split_for_cluster(0).canary_weight, 100, "{r:?}"),
            Some(0) => assert_eq!(r.split_for_cluster(1).canary_weight, 0, "{r:?}"),
            _ => {}
        }
    }
    // Each cluster's walk was analysed: three steps each.
    assert_eq!(sim.analyses(), 6);
    // One finalise, after the last wave only.
    let finalises = sim
        .actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::Finalise { .. }))
        .count();
    assert_eq!(finalises, 1);
}

#[test]
fn a_failure_in_the_second_wave_rolls_back_every_cluster() {
    let mut sim = Sim::new(waves(30, 10, 2));
    sim.run_answering(Outcome::Pass, true, |sim, seq| {
        let outcome = if sim.st.wave == 1 {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        verdict(seq, outcome)
    });
    assert_eq!(sim.st.phase, Phase::Failed);
    assert_eq!(sim.st.wave, 1, "failed in us's wave");
    let last = sim.routes().pop().expect("route");
    // The rollback is every cluster's, eu's (promoted) too.
    assert_eq!(last.wave, None);
    for cluster in 0..2 {
        assert_eq!(last.split_for_cluster(cluster).canary_weight, 0);
    }
    assert_eq!(wave_trail(&sim)[4], (Some(0), 100), "eu was promoted first");
    // The events of us's wave name it.
    let rolled_back = sim
        .actions
        .iter()
        .find_map(|(_, a)| match a {
            Action::Emit(e) if e.kind == EventKind::RolledBack => Some(e.clone()),
            _ => None,
        })
        .expect("rolled back");
    assert_eq!(
        rolled_back.details.get("cluster").map(String::as_str),
        Some("us")
    );
    assert_eq!(
        rolled_back.details.get("wave").map(String::as_str),
        Some("2 of 2")
    );
    // A retry starts again at the first wave.
    sim.command(Command::Retry).expect("retry");
    assert_eq!(sim.st.wave, 0);
}

#[test]
fn each_clusters_ack_is_checked_against_its_part_of_the_wave() {
    let mut sim = Sim::new(waves(30, 10, 2));
    // Through the first route (to the primary everywhere) to eu's first step.
    sim.input(Input::Tick);
    sim.confirm_route();
    let Wait::Route { seq, .. } = sim.st.wait else {
        panic!("no step route: {:?}", sim.st)
    };
    assert_eq!(
        sim.st.route.as_ref().map(|r| (r.wave, r.canary_weight)),
        Some((Some(0), 10))
    );
    let ack = |ingress: &str, canary: u8| IngressSplit {
        ingress: ingress.into(),
        observed: ObservedSplit {
            canary_weight: canary,
            primary_weight: 100 - canary,
            mirror_percent: 0,
        },
        confirmed_at_ms: 0,
    };
    // us serving eu's split is wrong: us is not moved before its wave.
    sim.input(Input::IngressesConfirmed {
        seq,
        ingresses: vec![ack("eu/edge", 10), ack("us/edge", 10)],
    });
    assert!(!sim.st.route_confirmed);
    let halt = sim.st.halt_reason.clone().unwrap_or_default();
    assert!(
        halt.contains("us/edge") && halt.contains("wanted 0/100"),
        "{halt}"
    );
    sim.input(Input::IngressesConfirmed {
        seq,
        ingresses: vec![ack("eu/edge", 10), ack("us/edge", 0)],
    });
    assert!(sim.st.route_confirmed, "{:?}", sim.st);
    assert_eq!(sim.st.canary_weight, 10);
}

#[test]
fn a_full_promotion_under_waves_promotes_every_cluster_at_once() {
    let mut sim = Sim::new(waves(30, 10, 2));
    sim.input(Input::Tick);
    sim.confirm_route();
    sim.confirm_route();
    sim.command(Command::Promote { full: true })
        .expect("promote");
    assert_eq!(sim.st.wave, 1);
    let route = sim.st.route.clone().expect("route");
    assert_eq!((route.wave, route.canary_weight), (Some(1), 100));
    assert_eq!(route.split_for_cluster(0).canary_weight, 100);
    sim.run(Outcome::Pass, true);
    assert_eq!(sim.st.phase, Phase::Succeeded);
    assert_eq!(sim.analyses(), 0);
}
