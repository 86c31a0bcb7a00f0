//! Refuses, at `Apply`, a spec that an ingress's data plane cannot express.
//!
//! Router agents publish what each of their ingresses' providers can do in the agents bucket
//! (`AgentCapabilities`, protobuf, key = ingress). [`requirements`] lists what a spec needs,
//! each with the field that needs it; [`check`] compares them with every ingress's published
//! capabilities. An ingress with no published capabilities (its agent has not started yet) is
//! allowed: the agent still refuses an inexpressible route when it is sent, and the step halts.

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_bus::typed::Proto;
use aviary_core::spec::{MatchRule, RolloutSpec, Step};
use aviary_proto::AgentCapabilities;
use tracing::info;

/// A routing feature a data plane may or may not express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// A weighted split other than 0/100.
    Weights,
    /// A/B routing on request headers.
    HeaderMatch,
    /// A/B routing on cookies.
    CookieMatch,
    /// Traffic mirroring to the canary.
    Mirror,
    /// Session affinity cookies.
    SessionAffinity,
}

impl Feature {
    /// Whether `capabilities` includes this feature.
    pub fn supported_by(self, capabilities: &AgentCapabilities) -> bool {
        match self {
            Self::Weights => capabilities.weights,
            Self::HeaderMatch => capabilities.header_match,
            Self::CookieMatch => capabilities.cookie_match,
            Self::Mirror => capabilities.mirror,
            Self::SessionAffinity => capabilities.session_affinity,
        }
    }

    /// What a provider lacking the feature cannot do, as a sentence end.
    pub fn inability(self) -> &'static str {
        match self {
            Self::Weights => "cannot split traffic by weight",
            Self::HeaderMatch => "cannot route on request headers",
            Self::CookieMatch => "cannot route on cookies",
            Self::Mirror => "cannot mirror traffic",
            Self::SessionAffinity => "cannot pin sessions with a cookie",
        }
    }
}

/// A feature the spec needs, and the field that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The feature.
    pub feature: Feature,
    /// Field path, e.g. `spec.analysis.mirror`.
    pub field: String,
}

fn require(out: &mut Vec<Requirement>, feature: Feature, field: String) {
    out.push(Requirement { feature, field });
}

fn match_requirements(out: &mut Vec<Requirement>, rules: &[MatchRule], path: &str) {
    for (i, rule) in rules.iter().enumerate() {
        if !rule.headers.is_empty() {
            require(out, Feature::HeaderMatch, format!("{path}[{i}].headers"));
        }
        if !rule.cookies.is_empty() {
            require(out, Feature::CookieMatch, format!("{path}[{i}].cookies"));
        }
    }
}

/// Every routing feature `spec` needs, in field order.
pub fn requirements(spec: &RolloutSpec) -> Vec<Requirement> {
    let mut out = Vec::new();
    let a = &spec.analysis;
    let partial = |w: u8| !w.is_multiple_of(100);
    if a.step_weight.is_some_and(partial) {
        require(
            &mut out,
            Feature::Weights,
            "spec.analysis.stepWeight".into(),
        );
    }
    if a.step_weights
        .as_ref()
        .is_some_and(|w| w.iter().any(|w| partial(*w)))
    {
        require(
            &mut out,
            Feature::Weights,
            "spec.analysis.stepWeights".into(),
        );
    }
    if a.step_weight_promotion.is_some_and(partial) {
        require(
            &mut out,
            Feature::Weights,
            "spec.analysis.stepWeightPromotion".into(),
        );
    }
    match_requirements(&mut out, &a.matches, "spec.analysis.match");
    if a.mirror {
        require(&mut out, Feature::Mirror, "spec.analysis.mirror".into());
    }
    if a.session_affinity.is_some() {
        require(
            &mut out,
            Feature::SessionAffinity,
            "spec.analysis.sessionAffinity".into(),
        );
    }
    for (i, step) in spec.steps.iter().flatten().enumerate() {
        let path = format!("spec.steps[{i}]");
        match step {
            Step::SetWeight(w) if partial(*w) => {
                require(&mut out, Feature::Weights, format!("{path}.setWeight"));
            }
            Step::SetHeaderRoute(h) => {
                match_requirements(
                    &mut out,
                    &h.matches,
                    &format!("{path}.setHeaderRoute.match"),
                );
            }
            Step::SetMirror(m) if m.weight > 0 => {
                require(&mut out, Feature::Mirror, format!("{path}.setMirror"));
            }
            _ => {}
        }
    }
    out
}

/// Why a spec cannot be applied: one line per field and ingress that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Unsupported(pub Vec<String>);

/// Checks `spec` against the capabilities published for each of its ingresses (`None`: no
/// agent has published for that ingress).
///
/// Errors: [`Unsupported`], a line per refusal such as
/// `spec.analysis.mirror: ingress "lb" (haproxy) cannot mirror traffic`.
pub fn check<'a>(
    spec: &RolloutSpec,
    published: impl IntoIterator<Item = (&'a str, Option<&'a AgentCapabilities>)>,
) -> Result<(), Unsupported> {
    let needs = requirements(spec);
    let mut refusals = Vec::new();
    for (ingress, capabilities) in published {
        let Some(capabilities) = capabilities else {
            continue;
        };
        for need in &needs {
            if !need.feature.supported_by(capabilities) {
                refusals.push(format!(
                    "{}: ingress {ingress:?} ({}) {}",
                    need.field,
                    capabilities.provider,
                    need.feature.inability()
                ));
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(Unsupported(refusals))
    }
}

/// Reads from `agents` what each of `ingresses` (how status names it, its name in the
/// bucket) published; `None` for an ingress no router agent published for (not checked).
///
/// Errors: [`aviary_bus::BusError`] when the bucket cannot be read.
pub async fn read_published(
    agents: &Bucket<AgentCapabilities, Proto>,
    ingresses: Vec<(String, String)>,
) -> Result<Vec<(String, Option<AgentCapabilities>)>, aviary_bus::BusError> {
    let mut published = Vec::new();
    for (label, ingress) in ingresses {
        // An ingress name that is not a valid key has been refused by validation already.
        let Ok(key) = names::agent_key(&ingress) else {
            continue;
        };
        let capabilities = agents.get(&key).await?.map(|entry| entry.value);
        if capabilities.is_none() {
            info!(ingress = %label,
                "no router agent has published capabilities for this ingress; not checked");
        }
        published.push((label, capabilities));
    }
    Ok(published)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(analysis: serde_json::Value, steps: Option<serde_json::Value>) -> RolloutSpec {
        let mut spec = json!({
            "ingresses": [{ "name": "lb" }, { "name": "edge" }],
            "primary": { "name": "a" },
            "canary": { "name": "b" },
            "analysis": analysis,
        });
        if let Some(steps) = steps {
            spec["steps"] = steps;
        }
        serde_json::from_value(spec).unwrap()
    }

    fn haproxy() -> AgentCapabilities {
        AgentCapabilities {
            ingress: "lb".into(),
            provider: "haproxy".into(),
            weights: true,
            ..Default::default()
        }
    }

    #[test]
    fn names_the_field_the_provider_cannot_serve() {
        let s = spec(json!({ "iterations": 5, "mirror": true }), None);
        let caps = haproxy();
        let error = check(&s, [("lb", Some(&caps)), ("edge", None)]).unwrap_err();
        assert_eq!(
            error.0,
            vec![r#"spec.analysis.mirror: ingress "lb" (haproxy) cannot mirror traffic"#]
        );
        let weighted = spec(json!({ "stepWeight": 10 }), None);
        assert!(check(&weighted, [("lb", Some(&caps))]).is_ok());
    }

    #[test]
    fn lists_matches_and_steps() {
        let s = spec(
            json!({ "match": [
                { "headers": { "x-canary": { "exact": "insider" } } },
                { "cookies": { "canary": { "exact": "always" } } },
            ] }),
            Some(json!([
                { "setWeight": 5 },
                { "setMirror": { "weight": 10 } },
                { "setMirror": { "weight": 0 } },
                { "setWeight": 100 },
            ])),
        );
        let fields: Vec<_> = requirements(&s).into_iter().map(|r| r.field).collect();
        assert_eq!(
            fields,
            [
                "spec.analysis.match[0].headers",
                "spec.analysis.match[1].cookies",
                "spec.steps[0].setWeight",
                "spec.steps[1].setMirror",
            ]
        );
    }
}
