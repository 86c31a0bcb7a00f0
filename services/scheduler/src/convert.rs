//! Conversions at the scheduler's edges: the machine's types to the bus and API contracts, and
//! the analyzer's verdicts back into the machine's.

use aviary_core::clusters::ClusterPolicy;
use aviary_core::machine::{
    self, CheckResult, EventKind as CoreKind, Outcome, Phase, RolloutStatus,
};
use aviary_core::plan::Plan;
use aviary_core::route::RouteSelector;
use aviary_core::spec::{MatchRule, RolloutSpec, StringMatch, Target, Webhook};
use aviary_proto as pb;
use aviary_proto::events::{AuditEvent, EventData, EventKind, MetricValue};

use crate::effects::IngressTarget;
use crate::record::RolloutRecord;

pub use aviary_runtime::clock::now_ms;

/// RFC 3339 (UTC, millisecond precision) for an epoch-millisecond time.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (proleptic Gregorian), valid for every date after 1970.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

/// The protobuf phase of a machine phase.
pub fn phase(p: Phase) -> pb::Phase {
    match p {
        Phase::Initializing => pb::Phase::Initializing,
        Phase::Initialized => pb::Phase::Initialized,
        Phase::Waiting => pb::Phase::Waiting,
        Phase::Progressing => pb::Phase::Progressing,
        Phase::WaitingPromotion => pb::Phase::WaitingPromotion,
        Phase::Promoting => pb::Phase::Promoting,
        Phase::Finalising => pb::Phase::Finalising,
        Phase::Succeeded => pb::Phase::Succeeded,
        Phase::Failed => pb::Phase::Failed,
        Phase::Paused => pb::Phase::Paused,
    }
}

fn strategy(s: aviary_core::Strategy) -> pb::Strategy {
    use aviary_core::Strategy as S;
    match s {
        S::Canary => pb::Strategy::Canary,
        S::AbTesting => pb::Strategy::AbTesting,
        S::BlueGreen => pb::Strategy::BlueGreen,
        S::BlueGreenMirror => pb::Strategy::BlueGreenMirror,
        S::Steps => pb::Strategy::Steps,
    }
}

fn outcome(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Pass => pb::Outcome::Pass,
        Outcome::Fail => pb::Outcome::Fail,
        Outcome::Inconclusive => pb::Outcome::Inconclusive,
        Outcome::Error => pb::Outcome::Error,
    }
}

fn outcome_from(o: i32) -> Outcome {
    match pb::Outcome::try_from(o).unwrap_or(pb::Outcome::Unspecified) {
        pb::Outcome::Pass => Outcome::Pass,
        pb::Outcome::Fail => Outcome::Fail,
        pb::Outcome::Inconclusive => Outcome::Inconclusive,
        // An answer that does not say is not a pass.
        pb::Outcome::Error | pb::Outcome::Unspecified => Outcome::Error,
    }
}

fn backend(target: &Target) -> pb::Backend {
    pb::Backend {
        name: target.name.clone(),
        endpoints: target.endpoints.clone(),
    }
}

fn string_match(m: &StringMatch) -> pb::StringMatch {
    use pb::string_match::Kind;
    let kind = match m {
        StringMatch::Exact(v) => Kind::Exact(v.clone()),
        StringMatch::Prefix(v) => Kind::Prefix(v.clone()),
        StringMatch::Suffix(v) => Kind::Suffix(v.clone()),
        StringMatch::Regex(v) => Kind::Regex(v.clone()),
    };
    pb::StringMatch { kind: Some(kind) }
}

fn match_rule(rule: &MatchRule) -> pb::MatchRule {
    let headers = rule.headers.iter().map(|(name, m)| pb::MatchCondition {
        kind: pb::match_condition::Kind::Header as i32,
        name: name.clone(),
        value: Some(string_match(m)),
    });
    let cookies = rule.cookies.iter().map(|(name, m)| pb::MatchCondition {
        kind: pb::match_condition::Kind::Cookie as i32,
        name: name.clone(),
        value: Some(string_match(m)),
    });
    pb::MatchRule {
        conditions: headers.chain(cookies).collect(),
    }
}

/// The route command for a machine route: every ingress gets the same split, for the requests
/// the spec's [`RouteSelector`] selects.
pub fn route_command(record: &RolloutRecord, route: &machine::DesiredRoute) -> pb::RouteCommand {
    let spec = &record.rollout.spec;
    let selector = RouteSelector::of(spec);
    let rollout = pb::RolloutRef::new(record.namespace(), record.name());
    let key = format!(
        "{}/{}/{}/r{}",
        record.namespace(),
        record.name(),
        record.generation,
        route.seq
    );
    pb::RouteCommand {
        idempotency_key: key,
        generation: record.generation,
        step: u32::try_from(record.status.step).unwrap_or(u32::MAX),
        route: Some(pb::DesiredRoute {
            rollout: Some(rollout),
            ingress: String::new(),
            primary: Some(backend(&spec.primary)),
            canary: Some(backend(&spec.canary)),
            primary_weight: u32::from(route.primary_weight),
            canary_weight: u32::from(route.canary_weight),
            mirror_percent: u32::from(route.mirror_percent),
            matches: route.matches.iter().map(match_rule).collect(),
            session_affinity: route
                .session_affinity
                .as_ref()
                .map(|a| pb::SessionAffinity {
                    cookie_name: a.cookie_name.clone(),
                    cookie_value: a.cookie_value.clone(),
                    max_age_seconds: u32::try_from(a.max_age_seconds.max(0)).unwrap_or(u32::MAX),
                    expired: a.max_age_seconds < 0,
                    primary_cookie_name: a.primary_cookie_name.clone().unwrap_or_default(),
                    primary_max_age_seconds: u32::try_from(a.primary_max_age_seconds.max(0))
                        .unwrap_or(u32::MAX),
                }),
            hosts: selector.hosts,
            path_prefix: selector.path_prefix,
        }),
    }
}

/// Each ingress's ack as the machine reads it (a value beyond a `u8` reads as 255, which no
/// split asks for, so it fails the check).
pub fn ingress_splits(acks: &[pb::RouteAck]) -> Vec<machine::IngressSplit> {
    let percent = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
    acks.iter()
        .map(|ack| machine::IngressSplit {
            ingress: ack.ingress.clone(),
            observed: machine::ObservedSplit {
                canary_weight: percent(ack.canary_weight),
                primary_weight: percent(ack.primary_weight),
                mirror_percent: percent(ack.mirror_percent),
            },
            confirmed_at_ms: u64::try_from(ack.confirmed_at_ms).unwrap_or(0),
        })
        .collect()
}

/// The route that makes the canary the primary: in endpoint mode the canary's endpoints serve
/// everything, under the primary role.
/// The workload command for `op` (workload mode); idempotency key `<ns>/<name>/<gen>/w<seq>`.
pub fn workload_command(
    record: &RolloutRecord,
    seq: u64,
    op: machine::WorkloadOp,
) -> pb::WorkloadCommand {
    let op = match op {
        machine::WorkloadOp::ScaleCanaryUp => pb::WorkloadOp::ScaleCanaryUp,
        machine::WorkloadOp::PromotePrimary => pb::WorkloadOp::PromotePrimary,
        machine::WorkloadOp::ScaleCanaryDown => pb::WorkloadOp::ScaleCanaryDown,
    };
    pb::WorkloadCommand {
        idempotency_key: format!(
            "{}/{}/{}/w{seq}",
            record.namespace(),
            record.name(),
            record.generation
        ),
        rollout: Some(pb::RolloutRef::new(record.namespace(), record.name())),
        generation: record.generation,
        op: op as i32,
        canary_revision: record
            .rollout
            .spec
            .canary
            .revision
            .clone()
            .unwrap_or_default(),
    }
}

/// The route command that finalises a promotion (request `seq`): the promoted canary's
/// endpoints become the primary's, at 100 %.
pub fn finalise_command(record: &RolloutRecord, seq: u64) -> pb::RouteCommand {
    let spec = &record.rollout.spec;
    // The run is over: with session affinity, the data plane keeps expiring this run's cookie
    // (`Max-Age=-1`) after the promotion too, so no client keeps it.
    let session_affinity = spec
        .analysis
        .session_affinity
        .as_ref()
        .zip(record.status.session_cookie.as_ref())
        .map(|(sa, value)| machine::CookieAffinity {
            cookie_name: sa.cookie_name.clone(),
            cookie_value: value.clone(),
            max_age_seconds: -1,
            primary_cookie_name: None,
            primary_max_age_seconds: 0,
        });
    let route = machine::DesiredRoute {
        seq,
        canary_weight: 0,
        primary_weight: 100,
        mirror_percent: 0,
        matches: Vec::new(),
        session_affinity,
        wave: None,
    };
    let mut command = route_command(record, &route);
    // The roles swap: the canary serves everything as the primary, and the old primary stays
    // configured at weight 0 until the next rollout replaces it.
    if let Some(r) = command.route.as_mut() {
        r.primary = Some(backend(&spec.canary));
        r.canary = Some(backend(&spec.primary));
    }
    command.idempotency_key = format!(
        "{}/{}/{}/f{seq}",
        record.namespace(),
        record.name(),
        record.generation
    );
    command
}

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

/// True for a multi-cluster rollout under policy `waves`.
fn waves(record: &RolloutRecord) -> bool {
    let spec = &record.rollout.spec;
    !spec.clusters.is_empty() && spec.cluster_policy == Some(ClusterPolicy::Waves)
}

/// What `route` sends to each ingress of the rollout: every ingress the same command, except
/// under policy `waves`, where each cluster gets its part of the route
/// ([`machine::DesiredRoute::for_cluster`]).
pub fn route_sends(
    record: &RolloutRecord,
    route: &machine::DesiredRoute,
) -> Vec<(IngressTarget, pb::RouteCommand)> {
    let clusters = &record.rollout.spec.clusters;
    let mut commands: Vec<Option<pb::RouteCommand>> = vec![None; clusters.len().max(1)];
    record
        .ingresses()
        .into_iter()
        .map(|target| {
            let at = target
                .cluster
                .as_ref()
                .and_then(|name| clusters.iter().position(|c| &c.name == name))
                .unwrap_or(0);
            let command = commands[at]
                .get_or_insert_with(|| route_command(record, &route.for_cluster(at)))
                .clone();
            (target, command)
        })
        .collect()
}

/// The finalising command ([`finalise_command`]) for every ingress of the rollout.
pub fn finalise_sends(record: &RolloutRecord, seq: u64) -> Vec<(IngressTarget, pb::RouteCommand)> {
    let command = finalise_command(record, seq);
    record
        .ingresses()
        .into_iter()
        .map(|target| (target, command.clone()))
        .collect()
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

/// The CloudEvent for a machine audit event.
pub fn audit_event(
    record: &RolloutRecord,
    sequence: u64,
    event: &machine::AuditEvent,
    actor: &str,
    at_ms: u64,
    verdict: Option<&machine::Verdict>,
) -> AuditEvent {
    let kind = match event.kind {
        CoreKind::Initialized | CoreKind::NewRevision => EventKind::Created,
        CoreKind::Progressing => EventKind::Started,
        CoreKind::StepStarted | CoreKind::AnalysisSkipped => EventKind::StepAdvanced,
        CoreKind::Waiting | CoreKind::WaitingPromotion => EventKind::GateWaiting,
        CoreKind::GateOpened | CoreKind::Approved => EventKind::GateOpened,
        CoreKind::GateClosed | CoreKind::Halted => EventKind::Halted,
        CoreKind::AnalysisPassed => EventKind::Verdict,
        CoreKind::CheckFailed => EventKind::CheckFailed,
        CoreKind::HookFailed => EventKind::HookFailed,
        CoreKind::Paused
        | CoreKind::Resumed
        | CoreKind::WeightSet
        | CoreKind::ManualPromotion
        | CoreKind::Aborted
        | CoreKind::Retried => EventKind::Command,
        CoreKind::Promoting | CoreKind::Finalising => EventKind::Promoting,
        CoreKind::Succeeded => EventKind::Succeeded,
        CoreKind::RolledBack => EventKind::RolledBack,
    };
    let kind = if event.kind == CoreKind::RolledBack && event.reason.contains("deadline") {
        EventKind::DeadlineExceeded
    } else {
        kind
    };
    let spec = &record.rollout.spec;
    // Events decided on a verdict carry every check's value and bounds, so the audit stream
    // (and every notification) shows why.
    let metrics = verdict
        .filter(|_| {
            matches!(
                kind,
                EventKind::Verdict
                    | EventKind::CheckFailed
                    | EventKind::RolledBack
                    | EventKind::Halted
            )
        })
        .map(|v| verdict_metrics(spec, v))
        .unwrap_or_default();
    // A step-started event announces the split it asks for, not the one still served.
    let canary_weight = event
        .details
        .get("canaryWeight")
        .and_then(|w| w.parse::<u8>().ok())
        .unwrap_or(event.canary_weight)
        .min(100);
    let mut reason = event.reason.clone();
    if let Ok(core_kind) = serde_json::to_value(event.kind)
        && let Some(name) = core_kind.as_str()
    {
        reason = format!("{name}: {reason}");
    }
    let data = EventData {
        step: u32::try_from(event.step).unwrap_or(u32::MAX),
        phase: event.phase.to_string(),
        canary_weight: u32::from(canary_weight),
        primary_weight: 100 - u32::from(canary_weight),
        reason,
        metrics,
        actor: actor.to_owned(),
        // Finalising goes on with the promotion its `promoting` event announced.
        repeated: event.details.contains_key(machine::REPEATED)
            || event.kind == CoreKind::Finalising,
        cluster: event.details.get("cluster").cloned().unwrap_or_default(),
        ..event_data(record)
    };
    let id = format!("{}/{}/{}", record.namespace(), record.name(), sequence);
    AuditEvent::new(kind, id, rfc3339(at_ms), data)
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

/// The event recording that `actor` deleted the rollout of `record` (its next sequence number);
/// a `forced` deletion says so, and what the rollout was still waiting for.
pub fn deleted_event(
    record: &RolloutRecord,
    actor: &str,
    reason: &str,
    forced: bool,
    at_ms: u64,
) -> AuditEvent {
    let status = &record.status;
    let what = if forced {
        format!(
            "deleted by force ({}, {})",
            status.phase,
            outstanding(&status.wait)
        )
    } else {
        "deleted".to_owned()
    };
    let data = EventData {
        step: u32::try_from(status.step).unwrap_or(u32::MAX),
        phase: status.phase.to_string(),
        canary_weight: u32::from(status.canary_weight),
        primary_weight: 100 - u32::from(status.canary_weight.min(100)),
        reason: if reason.is_empty() {
            what
        } else {
            format!("{what}: {reason}")
        },
        actor: actor.to_owned(),
        ..event_data(record)
    };
    let id = format!(
        "{}/{}/{}",
        record.namespace(),
        record.name(),
        record.event_seq + 1
    );
    AuditEvent::new(EventKind::Deleted, id, rfc3339(at_ms), data)
}

/// What every event of a rollout says about it: who it is, where its alerts go and which
/// `event` webhooks it calls.
fn event_data(record: &RolloutRecord) -> EventData {
    let spec = &record.rollout.spec;
    EventData {
        namespace: record.namespace().to_owned(),
        name: record.name().to_owned(),
        generation: record.generation,
        canary: spec.canary.name.clone(),
        primary: spec.primary.name.clone(),
        alerts: spec
            .analysis
            .alerts
            .iter()
            .map(|a| aviary_proto::events::AlertRoute {
                name: a.name.clone(),
                severity: serde_json::to_value(a.severity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                provider: a.provider_ref.name.clone(),
            })
            .collect(),
        event_webhooks: spec
            .analysis
            .webhooks
            .iter()
            .filter(|w| w.kind == aviary_core::spec::WebhookType::Event)
            .map(|w| aviary_proto::events::EventHook {
                name: w.name.clone(),
                url: w.url.clone(),
                timeout_ms: w.timeout.map(|t| t.as_millis()),
                metadata: w.metadata.clone(),
            })
            .collect(),
        ..EventData::default()
    }
}

/// Each check of a verdict with its value and, for metrics, the bounds from the spec.
pub fn verdict_metrics(spec: &RolloutSpec, verdict: &machine::Verdict) -> Vec<MetricValue> {
    verdict
        .checks
        .iter()
        .map(|check| {
            let range = spec
                .analysis
                .metrics
                .iter()
                .find(|m| m.name == check.name)
                .and_then(|m| m.threshold_range.as_ref());
            MetricValue {
                name: check.name.clone(),
                value: check.value,
                min: range.and_then(|r| r.min),
                max: range.and_then(|r| r.max),
                outcome: serde_json::to_value(check.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                reason: check.message.clone(),
            }
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalise_route_keeps_expiring_the_affinity_cookie() {
        let mut spec = aviary_core::spec::RolloutSpec::test();
        spec.analysis.session_affinity = Some(aviary_core::spec::SessionAffinity {
            cookie_name: "canary".into(),
            max_age: Some(60),
            primary_cookie_name: None,
        });
        let rollout = aviary_core::spec::Rollout {
            api_version: aviary_core::spec::API_VERSION.into(),
            kind: aviary_core::spec::KIND.into(),
            metadata: aviary_core::spec::Metadata {
                name: "podinfo".into(),
                namespace: Some("test".into()),
            },
            spec: spec.clone(),
        };
        let mut status = machine::RolloutStatus::new(&spec, 1);
        status.session_cookie = Some("abc".into());
        let record = RolloutRecord {
            manifest: crate::record::Manifest::new(""),
            rollout,
            generation: 1,
            status,
            commands: Vec::new(),
            outbox: Vec::new(),
            last_checks: Vec::new(),
            event_seq: 0,
        };
        let route = finalise_command(&record, 9).route.unwrap_or_default();
        let affinity = route.session_affinity.unwrap_or_default();
        assert_eq!(
            (
                affinity.cookie_name.as_str(),
                affinity.cookie_value.as_str(),
                affinity.expired
            ),
            ("canary", "abc", true)
        );
        // Without affinity in the spec, none.
        let mut plain = record.clone();
        plain.rollout.spec.analysis.session_affinity = None;
        assert!(
            finalise_command(&plain, 9)
                .route
                .unwrap_or_default()
                .session_affinity
                .is_none()
        );
    }

    fn record_of(spec: RolloutSpec) -> RolloutRecord {
        RolloutRecord::new(
            crate::record::Manifest::new(""),
            aviary_core::spec::Rollout {
                api_version: aviary_core::spec::API_VERSION.into(),
                kind: aviary_core::spec::KIND.into(),
                metadata: aviary_core::spec::Metadata {
                    name: "podinfo".into(),
                    namespace: Some("test".into()),
                },
                spec,
            },
        )
    }

    #[test]
    fn each_member_cluster_gets_its_request_its_provider_and_the_hooks_once() {
        let mut spec = RolloutSpec::test().clusters(&[("eu", &["edge"]), ("us", &["lb", "edge"])]);
        spec.clusters[1].metric_provider = Some(aviary_core::spec::MetricProvider {
            kind: "prometheus".into(),
            address: Some("http://127.0.0.1:9091".into()),
        });
        spec.clusters[1].canary_endpoints = vec!["127.0.0.2:9002".into()];
        let record = record_of(spec.clone());
        let targets = record.ingresses();
        let labels: Vec<_> = targets.iter().map(|t| t.label()).collect();
        assert_eq!(labels, ["eu/edge", "us/lb", "us/edge"]);
        assert!(targets[0].endpoints.is_empty());
        let us_edge: Vec<_> = targets[2].endpoints.iter().collect();
        assert_eq!(
            us_edge,
            [(&"podinfo-v2".to_owned(), &vec!["127.0.0.2:9002".to_owned()])]
        );
        let request = machine::AnalysisRequest {
            seq: 4,
            step: 1,
            window_start_ms: 1_000,
            window_end_ms: 61_000,
            canary_weight: 10,
            metrics: spec.analysis.metrics.clone(),
            webhooks: vec![Webhook {
                name: "smoke".into(),
                kind: aviary_core::spec::WebhookType::Rollout,
                url: "http://127.0.0.1:8090/smoke".into(),
                ..Webhook::default()
            }],
        };
        let requests = cluster_analysis_requests(&record, &request);
        let clusters: Vec<_> = requests.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(clusters, ["eu", "us"]);
        let (eu, us) = (&requests[0].1, &requests[1].1);
        assert_eq!(eu.metrics[0].provider_address, "");
        assert_eq!(us.metrics[0].provider_address, "http://127.0.0.1:9091");
        assert_eq!(us.metrics[0].provider_type, "prometheus");
        assert_eq!((eu.webhooks.len(), us.webhooks.len()), (1, 0));
        for (cluster, r) in &requests {
            assert_eq!((r.window_start_ms, r.window_end_ms), (1_000, 61_000));
            assert_eq!(r.variables.get("cluster"), Some(cluster));
        }
        assert_eq!(us.variables.get("ingress").map(String::as_str), Some("lb"));
        assert_eq!(hook_cluster(&record).as_deref(), Some("eu"));
        // A single-cluster rollout asks no member cluster.
        let single = record_of(RolloutSpec::test());
        assert!(cluster_analysis_requests(&single, &request).is_empty());
        assert_eq!(hook_cluster(&single), None);
        let targets = single.ingresses();
        assert_eq!(
            (targets[0].cluster.as_ref(), targets[0].label().as_str()),
            (None, "edge")
        );
    }

    #[test]
    fn under_waves_each_cluster_gets_its_part_and_only_the_current_wave_is_asked() {
        let mut spec = RolloutSpec::test().clusters(&[("eu", &["edge"]), ("us", &["lb", "edge"])]);
        spec.cluster_policy = Some(ClusterPolicy::Waves);
        let mut record = record_of(spec.clone());
        record.status.wave = 1;
        let route = machine::DesiredRoute {
            seq: 12,
            canary_weight: 20,
            primary_weight: 80,
            mirror_percent: 0,
            matches: Vec::new(),
            session_affinity: None,
            wave: Some(1),
        };
        let sent: Vec<_> = route_sends(&record, &route)
            .into_iter()
            .map(|(target, command)| {
                let r = command.route.expect("a route");
                (target.label(), r.canary_weight, r.primary_weight)
            })
            .collect();
        assert_eq!(
            sent,
            [
                ("eu/edge".to_owned(), 100, 0),
                ("us/lb".to_owned(), 20, 80),
                ("us/edge".to_owned(), 20, 80),
            ]
        );
        // The finalising route is everyone's.
        let finalised: Vec<_> = finalise_sends(&record, 13)
            .into_iter()
            .map(|(_, c)| c.route.expect("a route").primary_weight)
            .collect();
        assert_eq!(finalised, [100, 100, 100]);
        let request = machine::AnalysisRequest {
            seq: 14,
            step: 0,
            window_start_ms: 1_000,
            window_end_ms: 61_000,
            canary_weight: 20,
            metrics: spec.analysis.metrics.clone(),
            webhooks: vec![Webhook {
                name: "smoke".into(),
                kind: aviary_core::spec::WebhookType::Rollout,
                url: "http://127.0.0.1:8090/smoke".into(),
                ..Webhook::default()
            }],
        };
        let requests = cluster_analysis_requests(&record, &request);
        let asked: Vec<_> = requests
            .iter()
            .map(|(c, r)| (c.as_str(), r.webhooks.len()))
            .collect();
        assert_eq!(asked, [("us", 1)], "only us, with the step's hooks");
        assert_eq!(hook_cluster(&record).as_deref(), Some("us"));
        let status = rollout(&record, 1);
        let status = status.status.expect("a status");
        assert_eq!((status.wave, status.wave_cluster.as_str()), (1, "us"));
        // Policy all: every cluster the same route, and no wave in the status.
        let mut all = record_of(spec.clone());
        all.rollout.spec.cluster_policy = None;
        let route = machine::DesiredRoute {
            wave: None,
            ..route
        };
        assert!(
            route_sends(&all, &route)
                .iter()
                .all(|(_, c)| c.route.as_ref().is_some_and(|r| r.canary_weight == 20))
        );
        assert_eq!(rollout(&all, 1).status.expect("a status").wave_cluster, "");
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn unspecified_outcomes_never_pass() {
        let v = pb::Verdict {
            outcome: pb::Outcome::Unspecified as i32,
            ..Default::default()
        };
        assert_eq!(verdict(1, &v).outcome, Outcome::Error);
        let v = pb::Verdict {
            outcome: pb::Outcome::Pass as i32,
            error: "boom".into(),
            ..Default::default()
        };
        assert_eq!(verdict(1, &v).outcome, Outcome::Error);
    }

    #[test]
    fn rollback_hook_2xx_requests_rollback_and_decisive_fail_is_fail_fast() {
        let v = pb::Verdict {
            outcome: pb::Outcome::Fail as i32,
            decisive: true,
            webhooks: vec![pb::WebhookResult {
                r#type: "rollback".into(),
                status_code: 200,
                ..Default::default()
            }],
            ..Default::default()
        };
        let folded = verdict(7, &v);
        assert!(folded.rollback_requested);
        assert!(folded.fail_fast);
        assert!(folded.checks.is_empty());
    }

    /// A pass with a metric whose judge has not decided is an undecided pass; the same
    /// metric in a failed verdict leaves it a plain fail.
    #[test]
    fn a_pass_on_an_undecided_judge_is_undecided() {
        let mut v = pb::Verdict {
            outcome: pb::Outcome::Pass as i32,
            metrics: vec![
                pb::MetricResult {
                    name: "request-success-rate".into(),
                    outcome: pb::Outcome::Pass as i32,
                    judge_undecided: true,
                    ..Default::default()
                },
                pb::MetricResult {
                    name: "request-duration".into(),
                    outcome: pb::Outcome::Pass as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(verdict(1, &v).undecided);
        v.metrics[0].judge_undecided = false;
        assert!(!verdict(1, &v).undecided);
        v.metrics[0].judge_undecided = true;
        v.outcome = pb::Outcome::Fail as i32;
        v.metrics[1].outcome = pb::Outcome::Fail as i32;
        assert!(!verdict(1, &v).undecided);
    }

    #[test]
    fn unreachable_rollback_hook_means_no_rollback_not_an_error() {
        let v = pb::Verdict {
            // The analyzer folded the unreachable rollback hook in as an error.
            outcome: pb::Outcome::Error as i32,
            metrics: vec![pb::MetricResult {
                name: "request-success-rate".into(),
                outcome: pb::Outcome::Pass as i32,
                ..Default::default()
            }],
            webhooks: vec![
                pb::WebhookResult {
                    r#type: "rollback".into(),
                    outcome: pb::Outcome::Error as i32,
                    reason: "unreachable: connection refused".into(),
                    ..Default::default()
                },
                pb::WebhookResult {
                    r#type: "rollout".into(),
                    outcome: pb::Outcome::Pass as i32,
                    status_code: 200,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let folded = verdict(3, &v);
        assert!(!folded.rollback_requested);
        assert_eq!(folded.outcome, Outcome::Pass);
        // Other checks still fold as before.
        let mut failing = v.clone();
        failing.metrics[0].outcome = pb::Outcome::Fail as i32;
        assert_eq!(verdict(3, &failing).outcome, Outcome::Fail);
    }
}
