//! Analysis and webhook requests to the analyzers, and their verdicts back into the machine's.

use aviary_core::machine::{self, CheckResult, Outcome};
use aviary_core::spec::Webhook;
use aviary_proto as pb;

use super::{now_ms, outcome_from, waves};
use crate::record::RolloutRecord;

fn webhook(w: &Webhook) -> pb::WebhookCheck {
    pb::WebhookCheck {
        name: w.name.clone(),
        r#type: w.kind.as_str().to_owned(),
        url: w.url.clone(),
        timeout_ms: w.timeout.map_or(0, |t| t.as_millis()),
        retries: w.retries.unwrap_or(0),
        metadata: w.metadata.clone().into_iter().collect(),
    }
}

/// Template variables every query may use.
fn variables(record: &RolloutRecord) -> std::collections::HashMap<String, String> {
    let spec = &record.rollout.spec;
    let ns = record.namespace();
    let mut vars = std::collections::HashMap::new();
    vars.insert("namespace".into(), ns.to_owned());
    vars.insert("name".into(), record.name().to_owned());
    vars.insert("canary".into(), spec.canary.name.clone());
    vars.insert("primary".into(), spec.primary.name.clone());
    vars.insert(
        "canary_cluster".into(),
        aviary_proto::naming::cluster_name(ns, &spec.canary.name),
    );
    vars.insert(
        "primary_cluster".into(),
        aviary_proto::naming::cluster_name(ns, &spec.primary.name),
    );
    if let Some(started) = record.status.started_at_ms {
        // The sequential judge counts from the run's start, not the step's.
        vars.insert("run_start_ms".into(), started.to_string());
    }
    vars.insert(
        "ingress".into(),
        spec.ingresses
            .first()
            .map(|i| i.name.clone())
            .unwrap_or_default(),
    );
    vars
}

/// The analysis request for a machine request.
pub fn analysis_request(
    record: &RolloutRecord,
    request: &machine::AnalysisRequest,
) -> pb::AnalysisRequest {
    let interval_ms = record.rollout.spec.analysis.interval().as_millis();
    let metrics = request
        .metrics
        .iter()
        .map(|m| pb::MetricCheck {
            name: m.name.clone(),
            query: m.query.clone().unwrap_or_default(),
            min: m.threshold_range.as_ref().and_then(|r| r.min),
            max: m.threshold_range.as_ref().and_then(|r| r.max),
            max_delta: m.max_delta,
            max_ratio: m.max_ratio,
            on_no_data: serde_json::to_value(m.on_no_data)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            min_requests: m.min_requests.unwrap_or(0),
            provider_type: m
                .provider
                .as_ref()
                .map(|p| p.kind.clone())
                .unwrap_or_default(),
            provider_address: m
                .provider
                .as_ref()
                .and_then(|p| p.address.clone())
                .unwrap_or_default(),
            judge: serde_json::to_value(m.judge)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            interval_ms: m.interval.map_or(interval_ms, |i| i.as_millis()),
        })
        .collect();
    pb::AnalysisRequest {
        idempotency_key: format!(
            "{}/{}/{}/a{}",
            record.namespace(),
            record.name(),
            record.generation,
            request.seq
        ),
        rollout: Some(pb::RolloutRef::new(record.namespace(), record.name())),
        generation: record.generation,
        step: u32::try_from(request.step).unwrap_or(u32::MAX),
        window_start_ms: i64::try_from(request.window_start_ms).unwrap_or(i64::MAX),
        window_end_ms: i64::try_from(request.window_end_ms).unwrap_or(i64::MAX),
        metrics,
        webhooks: request.webhooks.iter().map(webhook).collect(),
        variables: variables(record),
        phase: record.status.phase.to_string(),
        checksum: record.status.canary_revision.clone(),
    }
}

/// The analysis requests of a multi-cluster rollout for a machine request: one per member
/// cluster asked, in `spec.clusters` order — every cluster under policy `all`, the current
/// wave's under `waves` — each with
///
/// - the cluster's `metricProvider` for every metric that names no provider address;
/// - the machine's window, the same for every cluster: it starts when the hub received the
///   last confirming ack of the step (no member's wall clock takes part);
/// - the variables `cluster` and `ingress` (its first ingress);
/// - the step's webhooks in the first request only, so each hook is called once.
///
/// Empty for a single-cluster rollout.
pub fn cluster_analysis_requests(
    record: &RolloutRecord,
    request: &machine::AnalysisRequest,
) -> Vec<(String, pb::AnalysisRequest)> {
    let spec = &record.rollout.spec;
    let base = analysis_request(record, request);
    let wave = waves(record).then_some(record.status.wave);
    spec.clusters
        .iter()
        .enumerate()
        .filter(|(i, _)| wave.is_none_or(|w| w == *i))
        .enumerate()
        .map(|(asked, (_, cluster))| {
            let mut out = base.clone();
            if let Some(provider) = &cluster.metric_provider {
                for metric in out
                    .metrics
                    .iter_mut()
                    .filter(|m| m.provider_address.is_empty())
                {
                    metric.provider_type.clone_from(&provider.kind);
                    metric.provider_address = provider.address.clone().unwrap_or_default();
                }
            }
            if asked > 0 {
                out.webhooks.clear();
            }
            out.variables.insert("cluster".into(), cluster.name.clone());
            out.variables.insert(
                "ingress".into(),
                cluster
                    .ingress_names()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
            (cluster.name.clone(), out)
        })
        .collect()
}

/// The member cluster whose analyzers call a multi-cluster rollout's gates and hooks: the first
/// of `spec.clusters`, or under policy `waves` the current wave's (`None`: single-cluster, the
/// unqualified queue group).
pub fn hook_cluster(record: &RolloutRecord) -> Option<String> {
    let clusters = &record.rollout.spec.clusters;
    let at = if waves(record) { record.status.wave } else { 0 };
    clusters
        .get(at)
        .or(clusters.first())
        .map(|c| c.name.clone())
}

/// A webhook-only request (gates and hooks).
pub fn webhook_request(
    record: &RolloutRecord,
    seq: u64,
    webhooks: &[Webhook],
) -> pb::AnalysisRequest {
    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    pb::AnalysisRequest {
        idempotency_key: format!(
            "{}/{}/{}/g{seq}",
            record.namespace(),
            record.name(),
            record.generation
        ),
        rollout: Some(pb::RolloutRef::new(record.namespace(), record.name())),
        generation: record.generation,
        step: u32::try_from(record.status.step).unwrap_or(u32::MAX),
        window_start_ms: now,
        window_end_ms: now,
        metrics: Vec::new(),
        webhooks: webhooks.iter().map(webhook).collect(),
        variables: variables(record),
        phase: record.status.phase.to_string(),
        checksum: record.status.canary_revision.clone(),
    }
}

/// The machine's view of an analyzer verdict for request `seq`.
pub fn verdict(seq: u64, v: &pb::Verdict) -> machine::Verdict {
    let mut checks: Vec<CheckResult> = v
        .metrics
        .iter()
        .map(|m| CheckResult {
            name: m.name.clone(),
            outcome: outcome_from(m.outcome),
            value: m.value,
            message: m.reason.clone(),
        })
        .collect();
    let mut rollback_requested = false;
    for w in &v.webhooks {
        if w.r#type == "rollback" {
            rollback_requested |= (200..300).contains(&w.status_code);
            continue;
        }
        checks.push(CheckResult {
            name: w.name.clone(),
            outcome: outcome_from(w.outcome),
            value: None,
            message: w.reason.clone(),
        });
    }
    let mut folded = outcome_from(v.outcome);
    if !rollback_requested && v.webhooks.iter().any(|w| w.r#type == "rollback") {
        // The analyzer folds a rollback hook it could not reach in as an error, which would
        // halt the analysis. As in Flagger, an unreachable rollback hook only means "no
        // rollback" (a 2xx is `rollback_requested` above): fold again without them.
        folded = fold_without_rollback_hooks(v);
    }
    if !v.error.is_empty() && folded == Outcome::Pass {
        folded = Outcome::Error;
    }
    machine::Verdict {
        seq,
        outcome: folded,
        fail_fast: v.decisive && folded == Outcome::Fail,
        early_promote: v.decisive && folded == Outcome::Pass,
        undecided: folded == Outcome::Pass && v.metrics.iter().any(|m| m.judge_undecided),
        checks,
        rollback_requested,
    }
}

/// The hooks of a [`machine::Action::RunHooks`] call that were not delivered: each that did not
/// answer 2xx (`<name>: HTTP <status>`, or why it could not be reached), and the analyzer's own
/// refusal. Empty when every hook answered 2xx.
pub fn failed_hooks(v: &pb::Verdict) -> Vec<String> {
    let mut failed: Vec<String> = v
        .webhooks
        .iter()
        .filter(|w| !(200..300).contains(&w.status_code))
        .map(|w| match (w.status_code, w.reason.is_empty()) {
            (0, false) => format!("{}: {}", w.name, w.reason),
            (0, true) => format!("{}: not reached", w.name),
            (status, _) => format!("{}: HTTP {status}", w.name),
        })
        .collect();
    if !v.error.is_empty() {
        failed.push(v.error.clone());
    }
    failed
}

/// The verdict's outcome folded as the analyzer does (any fail, else any error, else any
/// inconclusive, else pass) over its metrics and the webhooks that take part in the verdict,
/// leaving out `rollback` hooks (and the informational `post-rollout` and `event`).
fn fold_without_rollback_hooks(v: &pb::Verdict) -> Outcome {
    let outcomes: Vec<Outcome> = v
        .metrics
        .iter()
        .map(|m| outcome_from(m.outcome))
        .chain(
            v.webhooks
                .iter()
                .filter(|w| !matches!(w.r#type.as_str(), "rollback" | "post-rollout" | "event"))
                .map(|w| outcome_from(w.outcome)),
        )
        .collect();
    if outcomes.contains(&Outcome::Fail) {
        Outcome::Fail
    } else if outcomes.contains(&Outcome::Error) {
        Outcome::Error
    } else if outcomes.contains(&Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    }
}
