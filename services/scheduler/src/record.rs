//! The rollout record: one JSON value per rollout in the rollouts bucket, written only by CAS.

use std::collections::BTreeMap;

use aviary_core::Rollout;
use aviary_core::machine::{Command, Phase, RolloutStatus, Wait};
use aviary_proto::events::{AuditEvent, MetricValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::effects::IngressTarget;

/// The manifest as applied, kept as its encoded JSON string: it is written with every decision
/// and changes only with an `Apply`, so it is escaped once rather than on every write.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Manifest(Box<RawValue>);

impl Manifest {
    /// Wraps the text of a manifest.
    pub fn new(text: &str) -> Self {
        // Encoding a string cannot fail, and its encoding is valid JSON.
        let encoded = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        Self(RawValue::from_string(encoded).unwrap_or_else(|_| Self::empty()))
    }

    /// The manifest's text (empty when a stored record holds something other than a string).
    pub fn text(&self) -> String {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    fn empty() -> Box<RawValue> {
        RawValue::NULL.to_owned()
    }
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A control-API command waiting for the owner to act on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedCommand {
    /// Unique id (the API replica's clock and a random suffix).
    pub id: String,
    /// The command.
    pub command: Command,
    /// Who asked (recorded in the audit stream).
    pub actor: String,
    /// When it was accepted, epoch milliseconds.
    pub at_ms: u64,
    /// The W3C trace context of the API call that queued it: the decision that carries it out
    /// joins that call's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Everything stored about one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// The manifest as applied (YAML or JSON text).
    pub manifest: Manifest,
    /// The parsed, valid spec.
    pub rollout: Rollout,
    /// Bumped by every `Apply` that changes the spec.
    pub generation: u64,
    /// The state machine's status.
    pub status: RolloutStatus,
    /// Commands accepted by the API and not yet acted on.
    #[serde(default)]
    pub commands: Vec<QueuedCommand>,
    /// Audit events decided but not yet confirmed on the events stream.
    #[serde(default)]
    pub outbox: Vec<AuditEvent>,
    /// Every check of the last verdict with its value and bounds (the status keeps only names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_checks: Vec<MetricValue>,
    /// Events ever emitted for this rollout (their ids are `<ns>/<name>/<sequence>`).
    #[serde(default)]
    pub event_seq: u64,
}

impl RolloutRecord {
    /// A newly applied rollout: generation 1, a fresh status, nothing queued, no events yet.
    pub fn new(manifest: Manifest, rollout: Rollout) -> Self {
        Self {
            manifest,
            status: RolloutStatus::new(&rollout.spec, 1),
            rollout,
            generation: 1,
            commands: Vec::new(),
            outbox: Vec::new(),
            last_checks: Vec::new(),
            event_seq: 0,
        }
    }

    /// The rollout's namespace.
    pub fn namespace(&self) -> &str {
        self.rollout.namespace()
    }

    /// The rollout's name.
    pub fn name(&self) -> &str {
        &self.rollout.metadata.name
    }

    /// Whether an owner has anything to do: the run is not over, a command waits, or the spec
    /// changed since the status was decided.
    pub fn needs_driver(&self) -> bool {
        needs_driver(
            self.status.phase,
            &self.status.wait,
            !self.commands.is_empty(),
            self.generation,
            self.status.generation,
        )
    }

    /// Every ingress this rollout drives: those of `spec.ingresses`, or, for a multi-cluster
    /// rollout, each member cluster's (with that cluster's endpoints, when it gives them).
    pub fn ingresses(&self) -> Vec<IngressTarget> {
        let spec = &self.rollout.spec;
        let single = spec.ingresses.iter().map(|i| IngressTarget {
            cluster: None,
            ingress: i.name.clone(),
            endpoints: BTreeMap::new(),
        });
        let members = spec.clusters.iter().flat_map(|c| {
            c.ingress_names().map(|ingress| IngressTarget {
                cluster: Some(c.name.clone()),
                ingress: ingress.to_owned(),
                endpoints: [
                    (&spec.primary.name, &c.primary_endpoints),
                    (&spec.canary.name, &c.canary_endpoints),
                ]
                .into_iter()
                .filter(|(_, endpoints)| !endpoints.is_empty())
                .map(|(name, endpoints)| (name.clone(), endpoints.clone()))
                .collect(),
            })
        });
        single.chain(members).collect()
    }
}

/// A finished run still needs its owner while its last route (the rollback to the primary, or
/// the finalising one) is unconfirmed: a route is never fire-and-forget.
fn needs_driver(
    phase: Phase,
    wait: &Wait,
    commands_waiting: bool,
    generation: u64,
    decided: u64,
) -> bool {
    !phase.is_terminal()
        || matches!(
            wait,
            Wait::Route { .. } | Wait::Finalise { .. } | Wait::Workload { .. }
        )
        || commands_waiting
        || generation != decided
}

/// The few fields of a [`RolloutRecord`] the ownership watch needs, decoded without building
/// the spec, the manifest or the outbox: the watch sees every write of every rollout, so at
/// thousands of rollouts a full decode there costs as much as the decisions themselves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordSummary {
    /// As [`RolloutRecord::generation`].
    pub generation: u64,
    /// The parts of the status the watch reports.
    pub status: StatusSummary,
    /// Commands waiting (their content is not needed, only whether there are any).
    #[serde(default)]
    pub commands: Vec<serde::de::IgnoredAny>,
}

/// The parts of a [`RolloutStatus`] the ownership watch reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusSummary {
    /// The generation the status was decided for.
    pub generation: u64,
    /// The phase.
    pub phase: Phase,
    /// The canary's weight.
    pub canary_weight: u8,
    /// What the rollout waits for.
    #[serde(default)]
    pub wait: Wait,
}

impl RecordSummary {
    /// As [`RolloutRecord::needs_driver`].
    pub fn needs_driver(&self) -> bool {
        needs_driver(
            self.status.phase,
            &self.status.wait,
            !self.commands.is_empty(),
            self.generation,
            self.status.generation,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_stored_as_a_json_string_and_read_back_verbatim() {
        let text = "metadata: { name: \"a\\\\b\" }\n\ttab: é\n";
        let manifest = Manifest::new(text);
        let json = serde_json::to_string(&manifest).expect("encodes");
        assert_eq!(json, serde_json::to_string(text).expect("encodes"));
        let back: Manifest = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back.text(), text);
        assert_eq!(back, manifest);
        assert_ne!(Manifest::new("other"), manifest);
    }
}
