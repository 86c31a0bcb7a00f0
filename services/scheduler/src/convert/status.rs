//! The rollout and its status as the control API returns them.

use aviary_core::machine::{self, RolloutStatus};
use aviary_core::plan::Plan;
use aviary_proto as pb;
use aviary_proto::events::MetricValue;

use super::analysis::*;
use super::{outcome, phase, strategy, waves};
use crate::record::RolloutRecord;

/// The API's view of a stored rollout.
pub fn rollout(record: &RolloutRecord, revision: u64) -> pb::Rollout {
    let plan = Plan::build(&record.rollout.spec).ok();
    pb::Rollout {
        r#ref: Some(pb::RolloutRef::new(record.namespace(), record.name())),
        strategy: plan
            .as_ref()
            .map_or(pb::Strategy::Unspecified, |p| strategy(p.strategy)) as i32,
        manifest: record.manifest.text(),
        status: Some(status(
            &record.status,
            &record.last_checks,
            waves(record).then(|| hook_cluster(record)).flatten(),
        )),
        plan: plan.map(|p| planned(&p)).unwrap_or_default(),
        revision,
    }
}

fn planned(plan: &Plan) -> Vec<pb::PlannedStep> {
    plan.steps()
        .map(|s| pb::PlannedStep {
            canary_weight: u32::from(s.canary_weight),
            primary_weight: u32::from(s.primary_weight),
            mirror: s.mirror,
            mirror_weight: u32::from(s.mirror_weight.unwrap_or(0)),
            matched: s.matched(),
        })
        .collect()
}

fn status(
    s: &RolloutStatus,
    checks: &[MetricValue],
    wave_cluster: Option<String>,
) -> pb::RolloutStatus {
    let waiting_gates = match &s.wait {
        machine::Wait::Gate { gate, .. } => vec![gate.as_str().to_owned()],
        machine::Wait::Approval => vec!["approval".to_owned()],
        _ => Vec::new(),
    };
    pb::RolloutStatus {
        phase: phase(s.phase) as i32,
        generation: s.generation,
        step: u32::try_from(s.step).unwrap_or(u32::MAX),
        canary_weight: u32::from(s.canary_weight),
        primary_weight: u32::from(s.primary_weight),
        mirror_weight: u32::from(s.mirror_percent),
        failed_checks: s.failed_checks,
        iterations: s.iterations_done,
        halt_reason: s.halt_reason.clone().unwrap_or_default(),
        step_started_at_ms: s
            .step_started_at_ms
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
        next_tick_at_ms: s
            .next_tick_at_ms
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
        last_transition_at_ms: s
            .phase_since_ms
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
        last_verdict: s.last_verdict.as_ref().map(|v| pb::Verdict {
            step: u32::try_from(v.step).unwrap_or(u32::MAX),
            outcome: outcome(v.outcome) as i32,
            error: v.not_passed.join(", "),
            metrics: checks
                .iter()
                .map(|c| pb::MetricResult {
                    name: c.name.clone(),
                    value: c.value,
                    min: c.min,
                    max: c.max,
                    primary_value: None,
                    outcome: match c.outcome.as_str() {
                        "pass" => pb::Outcome::Pass,
                        "fail" => pb::Outcome::Fail,
                        "inconclusive" => pb::Outcome::Inconclusive,
                        _ => pb::Outcome::Error,
                    } as i32,
                    reason: c.reason.clone(),
                    judge_undecided: false,
                })
                .collect(),
            ..Default::default()
        }),
        affinity_cookie: s.session_cookie.clone().unwrap_or_default(),
        wave: u32::try_from(s.wave).unwrap_or(u32::MAX),
        wave_cluster: wave_cluster.unwrap_or_default(),
        waiting_gates,
        message: s.message.clone(),
        ingresses: s
            .ingresses
            .iter()
            .map(|i| pb::IngressSplit {
                ingress: i.ingress.clone(),
                primary_weight: u32::from(i.observed.primary_weight),
                canary_weight: u32::from(i.observed.canary_weight),
                mirror_percent: u32::from(i.observed.mirror_percent),
                confirmed_at_ms: i64::try_from(i.confirmed_at_ms).unwrap_or(i64::MAX),
            })
            .collect(),
    }
}

/// What a rollout's driver is waiting for, in words (for refusals and forced deletions).
pub fn outstanding(wait: &machine::Wait) -> String {
    use machine::Wait;
    match wait {
        Wait::Idle => "nothing outstanding".to_owned(),
        Wait::Route { seq, .. } => format!("route {seq} not acknowledged by every ingress"),
        Wait::Interval => "observing a step".to_owned(),
        Wait::Verdict { seq, .. } => format!("waiting for verdict {seq}"),
        Wait::Gate { gate, .. } => format!("at the {} gate", gate.as_str()),
        Wait::Pause { .. } => "at a pause step".to_owned(),
        Wait::Approval => "at an approval step".to_owned(),
        Wait::Check { .. } => "at a check step".to_owned(),
        Wait::Workload { op, .. } => format!("waiting for {}", op.as_str()),
        Wait::Finalise { seq, .. } => format!("finalise {seq} not confirmed"),
    }
}
