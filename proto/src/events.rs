//! The audit event contract: every rollout transition is one CloudEvents 1.0 event in JSON
//! (structured mode), stored on the `AVIARY_EVENTS` stream under
//! `aviary.events.<namespace>.<rollout>`, in order. Any NATS client in any language can read it;
//! the notifier and `aviary events` are two such readers. `docs/events.md` lists the types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// CloudEvents `specversion` we emit.
pub const SPEC_VERSION: &str = "1.0";
/// Prefix of every event `type` (reverse-DNS, as CloudEvents recommends).
pub const TYPE_PREFIX: &str = "dev.aviary.rollout.";

/// What happened to a rollout. The `type` attribute is [`TYPE_PREFIX`] + the kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A rollout was applied for the first time or its spec changed (new generation).
    Created,
    /// The rollout started moving traffic.
    Started,
    /// A step's split was confirmed by every ingress.
    StepAdvanced,
    /// Advancement stopped without a failed check (closed gate, missing ack, no verdict).
    Halted,
    /// A gate is waiting to be opened.
    GateWaiting,
    /// A gate opened.
    GateOpened,
    /// An analysis that passed, with every metric's value (a failed one is [`Self::CheckFailed`]).
    Verdict,
    /// A failed check (a metric or `rollout`/`pre-rollout` hook out of bounds) that counts
    /// toward `threshold`; `reason` says how many of how many, `metrics` which failed.
    CheckFailed,
    /// The canary is being promoted.
    Promoting,
    /// The rollout finished with the canary promoted.
    Succeeded,
    /// The canary failed its checks (or the deadline passed) and traffic went back to primary.
    RolledBack,
    /// The rollout was halted longer than `progressDeadlineSeconds`.
    DeadlineExceeded,
    /// A control-API command was accepted (pause, resume, promote, abort, approve, retry, weight).
    Command,
    /// An unauthenticated or unauthorised call was refused.
    Refused,
    /// A rollout was deleted through the control API: a finished one, or any with `force`
    /// (traffic stays as it was left).
    Deleted,
    /// A `post-rollout` hook, or a `rollback` hook called at a rollback, did not answer 2xx;
    /// `reason` names the hook and what it answered.
    HookFailed,
}

impl EventKind {
    /// The CloudEvents `type` attribute for this kind.
    pub fn event_type(self) -> String {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        format!("{TYPE_PREFIX}{name}")
    }

    /// Parses a CloudEvents `type` attribute back into a kind.
    pub fn from_event_type(ty: &str) -> Option<Self> {
        let name = ty.strip_prefix(TYPE_PREFIX)?;
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

/// One metric's result as recorded in an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// Metric name.
    pub name: String,
    /// Measured canary value; `None` when there was no data.
    pub value: Option<f64>,
    /// Lower bound, when the metric has one.
    pub min: Option<f64>,
    /// Upper bound, when the metric has one.
    pub max: Option<f64>,
    /// `pass`, `fail`, `inconclusive` or `error`.
    pub outcome: String,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A rollout's alert route, copied into its events so notifiers route by the rollout's own spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlertRoute {
    /// Alert name (unique within the rollout).
    pub name: String,
    /// Lowest severity sent: `info`, `warn` or `error`.
    pub severity: String,
    /// Name of a provider configured in the notifier.
    pub provider: String,
}

/// One of a rollout's `event` webhooks (`analysis.webhooks` with `type: event`), copied into
/// its events so the notifier calls it with every event, as Flagger does. Only what the spec
/// says and a subscriber may see: no notifier secret ever goes here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventHook {
    /// Webhook name (unique within the rollout).
    pub name: String,
    /// `http://` or `https://` URL the Flagger event payload is posted to.
    pub url: String,
    /// Per-call timeout in milliseconds; the notifier's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The webhook's `metadata`, merged into the payload's `metadata`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The `data` of an audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    /// Rollout namespace.
    pub namespace: String,
    /// Rollout name.
    pub name: String,
    /// Spec generation.
    pub generation: u64,
    /// Step index in the plan.
    pub step: u32,
    /// Phase after the transition (e.g. `Progressing`).
    pub phase: String,
    /// Canary weight after the transition.
    pub canary_weight: u32,
    /// Primary weight after the transition.
    pub primary_weight: u32,
    /// Human-readable reason (why halted, which gate, which command).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Metric results, on verdict and rollback events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricValue>,
    /// Who caused it, for commands (the caller's identity).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// Canary version (backend name) being rolled out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canary: String,
    /// Primary version (backend name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub primary: String,
    /// The rollout's `analysis.alerts`: where notifications for it go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertRoute>,
    /// The rollout's `event` webhooks: each is posted every event of the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_webhooks: Vec<EventHook>,
    /// The event goes on with something an earlier event of the same type reported and that is
    /// still in force (the same halt or closed gate, at a later interval; a promotion reaching
    /// its finalising step): recorded for the audit trail, posted to chat only once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
    /// A multi-cluster rollout under policy `waves`: the member cluster whose wave the event
    /// happened in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event: `<namespace>/<name>/<generation>/<sequence>`; also the `Nats-Msg-Id`,
    /// so a re-published event is de-duplicated by the stream.
    pub id: String,
    /// Emitting component, e.g. `aviary/scheduler`.
    pub source: String,
    /// [`TYPE_PREFIX`] + kind.
    #[serde(rename = "type")]
    pub ty: String,
    /// `<namespace>/<name>`.
    pub subject: String,
    /// RFC 3339 timestamp.
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The payload.
    pub data: EventData,
}

impl AuditEvent {
    /// Builds an event of `kind` with the given id, time (RFC 3339) and data.
    pub fn new(kind: EventKind, id: String, time: String, data: EventData) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            subject: format!("{}/{}", data.namespace, data.name),
            id,
            source: "aviary/scheduler".to_owned(),
            ty: kind.event_type(),
            time,
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// The kind, when the `type` is one of ours.
    pub fn kind(&self) -> Option<EventKind> {
        EventKind::from_event_type(&self.ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_round_trips() {
        for kind in [
            EventKind::StepAdvanced,
            EventKind::RolledBack,
            EventKind::DeadlineExceeded,
        ] {
            assert_eq!(EventKind::from_event_type(&kind.event_type()), Some(kind));
        }
        assert_eq!(
            EventKind::StepAdvanced.event_type(),
            "dev.aviary.rollout.step-advanced"
        );
        assert_eq!(EventKind::from_event_type("com.example.other"), None);
    }

    #[test]
    fn serializes_as_structured_cloudevent() {
        let data = EventData {
            namespace: "test".into(),
            name: "podinfo".into(),
            ..Default::default()
        };
        let event = AuditEvent::new(
            EventKind::Created,
            "test/podinfo/1/0".into(),
            "2026-01-01T00:00:00Z".into(),
            data,
        );
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "dev.aviary.rollout.created");
        assert_eq!(json["subject"], "test/podinfo");
        assert_eq!(json["data"]["namespace"], "test");
    }
}
