//! Audit events: the machine's events as the CloudEvents the events stream carries.

use aviary_core::machine::{self, EventKind as CoreKind};
use aviary_core::spec::RolloutSpec;
use aviary_proto::events::{AuditEvent, EventData, EventKind, MetricValue};

use super::rfc3339;
use super::status::*;
use crate::record::RolloutRecord;

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
