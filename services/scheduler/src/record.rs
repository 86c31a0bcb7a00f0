//! The rollout record: one JSON value per rollout in the rollouts bucket, written only by CAS.

use aviary_core::Rollout;
use aviary_core::machine::{Command, Phase, RolloutStatus, Wait};
use aviary_proto::events::{AuditEvent, MetricValue};
use serde::{Deserialize, Serialize};

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
}

/// Everything stored about one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// The manifest as applied (YAML or JSON text).
    pub manifest: String,
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

    /// The ingress names this rollout drives.
    pub fn ingresses(&self) -> Vec<String> {
        self.rollout
            .spec
            .ingresses
            .iter()
            .map(|i| i.name.clone())
            .collect()
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
        || matches!(wait, Wait::Route { .. } | Wait::Finalise { .. })
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
