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
