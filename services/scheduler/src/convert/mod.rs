//! Conversions at the scheduler's edges: the machine's types to the bus and API contracts, and
//! the analyzer's verdicts back into the machine's. One module per contract: `routes` (route,
//! finalise and workload commands, acks), `analysis` (analysis and webhook requests,
//! verdicts), `events` (audit events) and `status` (the API's rollout and status); the
//! enums and the time format they share are here.

use aviary_core::clusters::ClusterPolicy;
use aviary_core::machine::{Outcome, Phase};
use aviary_proto as pb;

use crate::record::RolloutRecord;

pub use aviary_runtime::clock::now_ms;

mod analysis;
mod events;
mod routes;
mod status;
#[cfg(test)]
mod tests;

pub use analysis::*;
pub use events::*;
pub use routes::*;
pub use status::*;

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

/// True for a multi-cluster rollout under policy `waves`.
fn waves(record: &RolloutRecord) -> bool {
    let spec = &record.rollout.spec;
    !spec.clusters.is_empty() && spec.cluster_policy == Some(ClusterPolicy::Waves)
}
