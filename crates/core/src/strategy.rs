//! Which kind of rollout a spec describes.
//!
//! Inferred as Flagger does (DESIGN.md §4): `steps:` → [`Strategy::Steps`]; `match` +
//! `iterations` → [`Strategy::AbTesting`]; `iterations` alone → [`Strategy::BlueGreen`], or
//! [`Strategy::BlueGreenMirror`] with `mirror: true`; otherwise [`Strategy::Canary`]. An explicit
//! `strategy:` wins when the fields do not contradict it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::spec::RolloutSpec;

/// A rollout strategy; serialized as `canary`, `ab`, `bluegreen`, `bluegreen-mirror`, `steps`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Weighted steps (`stepWeight`/`stepWeights`/`maxWeight`), optionally with session affinity.
    #[serde(rename = "canary")]
    Canary,
    /// Matched traffic (headers/cookies) goes to the canary for `iterations`.
    #[serde(rename = "ab")]
    AbTesting,
    /// Canary analysed at 0 % live traffic for `iterations`, then switched over.
    #[serde(rename = "bluegreen")]
    BlueGreen,
    /// Blue/green where the canary receives a mirror of live traffic while analysed.
    #[serde(rename = "bluegreen-mirror")]
    BlueGreenMirror,
    /// An explicit Argo-style step list.
    #[serde(rename = "steps")]
    Steps,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 5] = [
        Strategy::Canary,
        Strategy::AbTesting,
        Strategy::BlueGreen,
        Strategy::BlueGreenMirror,
        Strategy::Steps,
    ];

    /// The spelling used in YAML and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::AbTesting => "ab",
            Strategy::BlueGreen => "bluegreen",
            Strategy::BlueGreenMirror => "bluegreen-mirror",
            Strategy::Steps => "steps",
        }
    }

    /// Parses the YAML spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The strategy the fields imply, ignoring `strategy:`.
pub fn infer(spec: &RolloutSpec) -> Strategy {
    let a = &spec.analysis;
    if spec.steps.is_some() {
        Strategy::Steps
    } else if a.iterations.is_some() && !a.matches.is_empty() {
        Strategy::AbTesting
    } else if a.iterations.is_some() && a.mirror {
        Strategy::BlueGreenMirror
    } else if a.iterations.is_some() {
        Strategy::BlueGreen
    } else {
        Strategy::Canary
    }
}

/// The strategy in force.
///
/// Without `strategy:` this is [`infer`]. With it, the explicit value must agree with the
/// fields; the one allowance is `bluegreen-mirror` without `mirror: true`, where the explicit
/// strategy implies mirroring. A contradiction is an error at `spec.strategy`.
pub fn resolve(spec: &RolloutSpec) -> Result<Strategy, FieldError> {
    let inferred = infer(spec);
    let Some(explicit) = spec.strategy else {
        return Ok(inferred);
    };
    if explicit == inferred
        || (explicit == Strategy::BlueGreenMirror && inferred == Strategy::BlueGreen)
    {
        return Ok(explicit);
    }
    let why = match explicit {
        Strategy::Canary => "canary takes stepWeight/stepWeights, not iterations or steps",
        Strategy::AbTesting => "ab needs both match and iterations",
        Strategy::BlueGreen if spec.analysis.mirror => {
            "bluegreen does not mirror; use bluegreen-mirror or remove mirror"
        }
        Strategy::BlueGreen | Strategy::BlueGreenMirror => {
            "blue/green needs iterations and no match or steps"
        }
        Strategy::Steps => "steps needs a spec.steps list",
    };
    Err(FieldError::new(
        "spec.strategy",
        format!("{explicit} contradicts the other fields, which describe {inferred}: {why}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{PauseStep, Step};

    #[test]
    fn inference_table() {
        let base = RolloutSpec::test;
        assert_eq!(infer(&base()), Strategy::Canary);
        assert_eq!(infer(&base().session_affinity("c", 10)), Strategy::Canary);
        assert_eq!(infer(&base().iterations(3)), Strategy::BlueGreen);
        assert_eq!(
            infer(&base().iterations(3).mirror(None)),
            Strategy::BlueGreenMirror
        );
        assert_eq!(
            infer(&base().iterations(3).match_header("x", "y")),
            Strategy::AbTesting
        );
        assert_eq!(
            infer(&base().steps(vec![Step::Pause(PauseStep::default())])),
            Strategy::Steps
        );
    }

    #[test]
    fn explicit_must_agree() {
        let s = RolloutSpec::test().explicit_strategy(Strategy::Canary);
        assert_eq!(resolve(&s), Ok(Strategy::Canary));
        let s = RolloutSpec::test()
            .iterations(3)
            .explicit_strategy(Strategy::BlueGreenMirror);
        assert_eq!(resolve(&s), Ok(Strategy::BlueGreenMirror));
        let s = RolloutSpec::test()
            .iterations(3)
            .explicit_strategy(Strategy::Canary);
        assert_eq!(
            resolve(&s).map_err(|e| e.path),
            Err("spec.strategy".to_string())
        );
        let s = RolloutSpec::test().explicit_strategy(Strategy::AbTesting);
        assert!(resolve(&s).is_err());
        let s = RolloutSpec::test()
            .iterations(2)
            .mirror(None)
            .explicit_strategy(Strategy::BlueGreen);
        assert!(resolve(&s).is_err());
    }
}
