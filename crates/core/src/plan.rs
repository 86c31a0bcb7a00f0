//! The weight schedule a spec implies, for every strategy (DESIGN.md §4 worked examples).
//!
//! Owns the weight math: which canary/primary split each step serves, which steps are
//! analysed or held, the promotion weights (`stepWeightPromotion`), and the minimum time to
//! promotion and to rollback. `aviary plan` prints it; the [`crate::machine`] walks it.
//!
//! Canary rule: weights are `k × stepWeight` for k = 1, 2, … while the previous weight is below
//! `maxWeight`, each capped at 100. So `maxWeight: 50, stepWeight: 2` ends at exactly 50 (25
//! steps) and `maxWeight: 50, stepWeight: 20` serves 20, 40 and 60 — the weight goes *above*
//! maxWeight once, as documented upstream. `stepWeights` alone are served in order; beside
//! `stepWeight`, as in Flagger, only their last weight counts, as the maximum.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::HumanDuration;
use crate::error::ValidationErrors;
use crate::spec::{MatchRule, RolloutSpec, Step};
use crate::strategy::Strategy;

/// The whole schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The strategy in force.
    pub strategy: Strategy,
    /// Steps before promotion, in order ([`Plan::steps`], [`Plan::step`]); serialised as the
    /// list of [`PlannedStep`]s.
    steps: Schedule,
    /// How promotion proceeds.
    pub promotion: PromotionPlan,
    /// How soon a failing canary is rolled back at the earliest.
    pub rollback: RollbackPlan,
}

/// The steps of a plan. A progressive canary's steps differ only in their weight, so they are
/// kept as weights: a 1-point schedule has 99 steps, and a scheduler holds a plan for each of
/// thousands of rollouts.
#[derive(Clone, Debug)]
enum Schedule {
    /// Analysed, unmirrored, unmatched steps at these canary weights.
    Weights(Vec<u8>),
    /// Any other schedule, step by step.
    Listed(Vec<PlannedStep>),
}

impl Schedule {
    fn len(&self) -> usize {
        match self {
            Schedule::Weights(w) => w.len(),
            Schedule::Listed(s) => s.len(),
        }
    }

    fn get(&self, i: usize) -> Option<Cow<'_, PlannedStep>> {
        match self {
            Schedule::Weights(w) => w.get(i).map(|&w| Cow::Owned(PlannedStep::weighted(w))),
            Schedule::Listed(s) => s.get(i).map(Cow::Borrowed),
        }
    }

    fn iter(&self) -> impl Iterator<Item = Cow<'_, PlannedStep>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::deserialize(deserializer).map(Schedule::Listed)
    }
}

/// One step of the schedule: the split it serves and what must happen before moving on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    /// Percent of live traffic to the canary.
    pub canary_weight: u8,
    /// Percent of live traffic to the primary (`100 - canary_weight`).
    pub primary_weight: u8,
    /// Whether the canary receives mirrored traffic.
    pub mirror: bool,
    /// Percent of requests mirrored, when mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_weight: Option<u8>,
    /// Requests matching any of these rules go to the canary regardless of weight.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRule>,
    /// Whether a passing verdict is required before moving on.
    pub analysis: bool,
    /// A wait before moving on (steps strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Index in `spec.steps` this step comes from (steps strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<usize>,
}

/// A wait that is not an analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Hold {
    /// `pause:`; without a duration, until resumed or promoted.
    Pause {
        /// How long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<HumanDuration>,
    },
    /// `approval:`: until approved through the control API.
    Approval,
    /// `check:`: until the step's HTTP check (the `check` at the step's `source`) answers.
    Check,
}

/// Promotion: the minimum time before it starts and the weights it moves through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionPlan {
    /// Seconds from the first step until promotion can start at the earliest: the interval
    /// times the number of analysed steps, plus timed pauses.
    pub min_seconds: u64,
    /// Canary weights during promotion, one per interval, ending at 100
    /// (`stepWeightPromotion`; `[100]` by default).
    pub weights: Vec<u8>,
}

/// Rollback timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPlan {
    /// Seconds until a consistently failing canary is rolled back at the earliest: interval ×
    /// threshold.
    pub min_seconds: u64,
}

impl PlannedStep {
    fn weighted(canary: u8) -> Self {
        PlannedStep {
            canary_weight: canary,
            primary_weight: 100 - canary,
            mirror: false,
            mirror_weight: None,
            matches: Vec::new(),
            analysis: true,
            hold: None,
            source: None,
        }
    }

    /// True when the step routes matched traffic (A/B rules or a header route).
    pub fn matched(&self) -> bool {
        !self.matches.is_empty()
    }
}

impl Plan {
    /// Builds the schedule for a spec. Errors when the spec does not validate (the same errors
    /// as [`RolloutSpec::validate`]).
    pub fn build(spec: &RolloutSpec) -> Result<Plan, ValidationErrors> {
        spec.validate()?;
        let strategy = spec.strategy().map_err(|e| ValidationErrors(vec![e]))?;
        Ok(Self::build_unchecked(spec, strategy))
    }

    fn build_unchecked(spec: &RolloutSpec, strategy: Strategy) -> Plan {
        let a = &spec.analysis;
        let mut steps = Vec::new();
        let mut pauses = 0u64;
        match strategy {
            Strategy::Canary if !a.mirror => {
                let weights = Schedule::Weights(canary_weights(spec));
                return Self::finish(spec, strategy, weights, 0);
            }
            Strategy::Canary => {
                let mut s = PlannedStep::weighted(0);
                s.mirror = true;
                s.mirror_weight = Some(a.mirror_weight());
                steps.push(s);
                steps.extend(canary_weights(spec).into_iter().map(PlannedStep::weighted));
            }
            Strategy::AbTesting => {
                for _ in 0..a.iterations.unwrap_or(1) {
                    let mut s = PlannedStep::weighted(0);
                    s.matches = a.matches.clone();
                    steps.push(s);
                }
            }
            Strategy::BlueGreen | Strategy::BlueGreenMirror => {
                for _ in 0..a.iterations.unwrap_or(1) {
                    let mut s = PlannedStep::weighted(0);
                    if strategy == Strategy::BlueGreenMirror {
                        s.mirror = true;
                        s.mirror_weight = Some(a.mirror_weight());
                    }
                    steps.push(s);
                }
            }
            Strategy::Steps => {
                let mut cur = PlannedStep::weighted(0);
                cur.analysis = false;
                for (i, step) in spec.steps.iter().flatten().enumerate() {
                    let mut s = cur.clone();
                    s.source = Some(i);
                    s.hold = None;
                    s.analysis = false;
                    match step {
                        Step::SetWeight(w) => {
                            s.canary_weight = (*w).min(100);
                            s.primary_weight = 100 - s.canary_weight;
                        }
                        Step::Pause(p) => {
                            s.hold = Some(Hold::Pause {
                                duration: p.duration,
                            });
                            pauses += p.duration.map_or(0, |d| d.as_secs());
                        }
                        Step::Analysis(_) => s.analysis = true,
                        Step::Approval(_) => s.hold = Some(Hold::Approval),
                        Step::SetHeaderRoute(h) => s.matches = h.matches.clone(),
                        Step::SetMirror(m) => {
                            s.mirror = m.weight > 0;
                            s.mirror_weight = (m.weight > 0).then_some(m.weight.min(100));
                        }
                        Step::Stage(_) => {}
                        Step::Check(_) => s.hold = Some(Hold::Check),
                    }
                    cur = s.clone();
                    steps.push(s);
                }
            }
        }
        Self::finish(spec, strategy, Schedule::Listed(steps), pauses)
    }

    fn finish(spec: &RolloutSpec, strategy: Strategy, steps: Schedule, pauses: u64) -> Plan {
        let a = &spec.analysis;
        let interval = a.interval().as_secs();
        let analysed = steps.iter().filter(|s| s.analysis).count() as u64;
        let last = steps
            .len()
            .checked_sub(1)
            .and_then(|i| steps.get(i))
            .map_or(0, |s| s.canary_weight);
        Plan {
            strategy,
            promotion: PromotionPlan {
                min_seconds: interval * analysed + pauses,
                weights: promotion_weights(last, a.step_weight_promotion()),
            },
            rollback: RollbackPlan {
                min_seconds: interval * u64::from(a.threshold()),
            },
            steps,
        }
    }

    /// The steps before promotion, in order.
    pub fn steps(&self) -> impl Iterator<Item = Cow<'_, PlannedStep>> + '_ {
        self.steps.iter()
    }

    /// Step `i`, if the plan has that many.
    pub fn step(&self, i: usize) -> Option<Cow<'_, PlannedStep>> {
        self.steps.get(i)
    }

    /// How many steps come before promotion.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// Seconds until promotion can start at the earliest.
    pub fn promotion_min_seconds(&self) -> u64 {
        self.promotion.min_seconds
    }

    /// Seconds until a failing canary is rolled back at the earliest.
    pub fn rollback_min_seconds(&self) -> u64 {
        self.rollback.min_seconds
    }

    /// The canary weights of the steps, in order.
    pub fn weights(&self) -> Vec<u8> {
        self.steps().map(|s| s.canary_weight).collect()
    }
}

/// Canary weights for `stepWeight`/`stepWeights`/`maxWeight` (see the module docs).
pub fn canary_weights(spec: &RolloutSpec) -> Vec<u8> {
    let a = &spec.analysis;
    let max = a.max_weight();
    let mut out: Vec<u8> = Vec::new();
    // As Flagger: a `stepWeight` sets the steps even beside `stepWeights`, whose last weight is
    // then only the maximum ([`Analysis::max_weight`](crate::spec::Analysis::max_weight)).
    if let Some(ws) = a.step_weights.as_ref().filter(|_| a.step_weight.is_none()) {
        for &w in ws {
            if out.last().is_some_and(|&prev| prev >= max) {
                break;
            }
            out.push(w.min(100));
        }
        return out;
    }
    let step = u32::from(a.step_weight.unwrap_or(0));
    if step == 0 {
        return out;
    }
    let mut w = step;
    loop {
        let capped = w.min(100) as u8;
        out.push(capped);
        if capped >= max || capped >= 100 {
            break;
        }
        w += step;
    }
    out
}

/// Canary weights during promotion, starting after `from` and moving `step` per interval
/// until 100.
pub fn promotion_weights(from: u8, step: u8) -> Vec<u8> {
    let step = step.clamp(1, 100);
    let mut out = Vec::new();
    let mut w = u32::from(from);
    loop {
        w = (w + u32::from(step)).min(100);
        out.push(w as u8);
        if w >= 100 {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AnalysisStep, PauseStep};

    fn plan(spec: RolloutSpec) -> Plan {
        Plan::build(&spec).expect("valid spec")
    }

    #[test]
    fn stepweight_2_to_50() {
        let p = plan(
            RolloutSpec::test()
                .interval(HumanDuration::from_secs(60))
                .threshold(10)
                .max_weight(50)
                .step_weight(2),
        );
        let want: Vec<u8> = (1..=25).map(|k| k * 2).collect();
        assert_eq!(p.weights(), want);
        assert_eq!(p.promotion.min_seconds, 1500);
        assert_eq!(p.rollback.min_seconds, 600);
        assert_eq!(p.promotion.weights, vec![100]);
        assert!(p.steps().all(|s| s.canary_weight + s.primary_weight == 100));
    }

    #[test]
    fn stepweight_overshoots_max_once() {
        let p = plan(RolloutSpec::test().max_weight(50).step_weight(20));
        assert_eq!(p.weights(), vec![20, 40, 60]);
        let pairs: Vec<(u8, u8)> = p
            .steps()
            .map(|s| (s.canary_weight, s.primary_weight))
            .collect();
        assert_eq!(pairs, vec![(20, 80), (40, 60), (60, 40)]);
    }

    #[test]
    fn stepweights_list() {
        let p = plan(RolloutSpec::test().step_weights(&[1, 2, 10, 80]));
        let pairs: Vec<(u8, u8)> = p
            .steps()
            .map(|s| (s.canary_weight, s.primary_weight))
            .collect();
        assert_eq!(pairs, vec![(1, 99), (2, 98), (10, 90), (80, 20)]);
    }

    #[test]
    fn weights_cap_at_100() {
        let p = plan(RolloutSpec::test().max_weight(100).step_weight(30));
        assert_eq!(p.weights(), vec![30, 60, 90, 100]);
    }

    #[test]
    fn promotion_in_steps() {
        let p = plan(
            RolloutSpec::test()
                .max_weight(50)
                .step_weight(25)
                .step_weight_promotion(20),
        );
        assert_eq!(p.promotion.weights, vec![70, 90, 100]);
        assert_eq!(promotion_weights(0, 100), vec![100]);
        assert_eq!(promotion_weights(100, 100), vec![100]);
    }

    #[test]
    fn ab_and_bluegreen() {
        let ab = plan(
            RolloutSpec::test()
                .iterations(10)
                .match_header("x-canary", "insider")
                .threshold(2),
        );
        assert_eq!(ab.strategy, Strategy::AbTesting);
        assert_eq!(ab.step_count(), 10);
        assert!(ab.steps().all(|s| s.canary_weight == 0 && s.matched()));
        assert_eq!(ab.promotion.min_seconds, 600);
        assert_eq!(ab.rollback.min_seconds, 120);

        let bg = plan(RolloutSpec::test().iterations(5));
        assert_eq!(bg.strategy, Strategy::BlueGreen);
        assert_eq!(bg.weights(), vec![0; 5]);
        assert!(bg.steps().all(|s| !s.mirror));
        assert_eq!(bg.promotion.weights, vec![100]);

        let m = plan(RolloutSpec::test().iterations(5).mirror(Some(50)));
        assert_eq!(m.strategy, Strategy::BlueGreenMirror);
        assert!(
            m.steps()
                .all(|s| s.mirror && s.mirror_weight == Some(50) && s.primary_weight == 100)
        );
    }

    #[test]
    fn canary_with_mirror_starts_mirrored() {
        let p = plan(
            RolloutSpec::test()
                .max_weight(20)
                .step_weight(10)
                .mirror(None),
        );
        assert_eq!(p.weights(), vec![0, 10, 20]);
        assert!(p.step(0).expect("step").mirror);
        assert_eq!(p.step(0).expect("step").mirror_weight, Some(100));
        assert_eq!(p.promotion.min_seconds, 180);
    }

    #[test]
    fn explicit_steps() {
        let p = plan(RolloutSpec::test().steps(vec![
            Step::SetWeight(5),
            Step::Pause(PauseStep {
                duration: Some(HumanDuration::from_secs(300)),
            }),
            Step::Analysis(AnalysisStep::default()),
            Step::SetWeight(50),
            Step::Pause(PauseStep::default()),
        ]));
        assert_eq!(p.strategy, Strategy::Steps);
        assert_eq!(p.weights(), vec![5, 5, 5, 50, 50]);
        assert_eq!(p.steps().filter(|s| s.analysis).count(), 1);
        assert_eq!(p.promotion.min_seconds, 360);
    }

    #[test]
    fn json_shape() {
        let p = plan(
            RolloutSpec::test()
                .max_weight(50)
                .step_weight(20)
                .threshold(10),
        );
        let v = serde_json::to_value(&p).expect("serialize");
        assert_eq!(v["strategy"], "canary");
        assert_eq!(v["steps"][0]["canaryWeight"], 20);
        assert_eq!(v["steps"][0]["primaryWeight"], 80);
        assert_eq!(v["steps"][0]["mirror"], false);
        assert_eq!(v["promotion"]["minSeconds"], 180);
        assert_eq!(v["rollback"]["minSeconds"], 600);
    }
}
