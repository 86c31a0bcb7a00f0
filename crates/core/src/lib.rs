//! Aviary's rollout engine: the spec, its validation, the weight schedule and the state
//! machine. Pure: no I/O, no clocks, no randomness — time and random values come in as inputs.
//!
//! Flow: YAML/JSON/gRPC → [`spec::Rollout`] ([`decode::parse_rollout`], [`spec::Rollout::validate`])
//! → [`plan::Plan`] (what weights, in what order, how long at least) → [`machine`] (status +
//! input → new status + actions for the scheduler to carry out). Files mixing Aviary Rollouts
//! with Flagger's Canaries, MetricTemplates and AlertProviders decode with [`flagger::decode`].

#![warn(missing_docs)]

pub mod clusters;
pub mod decode;
pub mod duration;
pub mod error;
pub mod flagger;
pub mod judge;
pub mod machine;
pub mod plan;
pub mod route;
pub mod spec;
pub mod strategy;

pub use decode::{parse_rollout, parse_rollout_with_warnings};
pub use duration::{DurationError, HumanDuration, parse_duration};
pub use error::{FieldError, ValidationErrors};
pub use flagger::{Decoded, Warning, decode, decode_with};
pub use plan::{Plan, PlannedStep};
pub use spec::{Rollout, RolloutSpec};
pub use strategy::Strategy;
