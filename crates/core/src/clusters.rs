//! Multi-cluster rollouts: the member clusters a rollout spans, their validation, and how
//! their verdicts fold into the one verdict the [`machine`](crate::machine) acts on.
//!
//! Under [`ClusterPolicy::All`] every cluster steps together: the route of a step goes to every
//! cluster's ingresses (the scheduler confirms a route only when every ingress acked, so a
//! cluster whose link is down holds the step), and the step's analysis is asked of every
//! cluster's analyzers; [`fold_verdicts`] passes the step only when every cluster's verdict
//! passes, fails it (the machine then rolls back every cluster) when any cluster's fails, and
//! halts it when a cluster did not answer. Each check in the folded verdict is named
//! `<cluster>/<check>`, so status and events say which cluster failed.
//!
//! Under [`ClusterPolicy::Waves`] the clusters move one at a time, in `spec.clusters` order:
//! the cluster of the current wave walks the steps and is judged alone, the clusters of earlier
//! waves serve the canary fully (they were promoted), the later ones serve the primary; each
//! cluster's route is [`DesiredRoute::for_cluster`]. When a wave's promotion is served, the
//! next wave starts at its first step; the last wave's promotion finalises every cluster. A
//! failure in any wave rolls back every cluster, the promoted ones too.
//!
//! A [`RolloutSpec`](crate::RolloutSpec) names its clusters in `spec.clusters` and its policy
//! in `spec.clusterPolicy`; a spec without `clusters` is single-cluster and uses
//! `spec.ingresses`.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::machine::{CheckResult, DesiredRoute, ObservedSplit, Outcome, Verdict};
use crate::spec::{IngressRef, MetricProvider};

/// The longest cluster name: it is one NATS subject token and a label value.
const MAX_NAME_LEN: usize = 63;

/// One member cluster of a rollout (`spec.clusters[i]`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The cluster's name, as its router agents and analyzers are started (`--cluster`).
    pub name: String,
    /// The ingresses the rollout routes in this cluster, each served by a router agent of
    /// this cluster.
    #[serde(default)]
    pub ingresses: Vec<IngressRef>,
    /// This cluster's metrics backend: the analysis asked of this cluster queries it for every
    /// metric that names no provider address. Absent: the cluster's analyzers use their own
    /// default backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_provider: Option<MetricProvider>,
    /// The primary's endpoints as this cluster's ingresses reach them (`host:port`). Empty:
    /// `spec.primary.endpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_endpoints: Vec<String>,
    /// The canary's endpoints as this cluster's ingresses reach them (`host:port`). Empty:
    /// `spec.canary.endpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_endpoints: Vec<String>,
}

impl ClusterSpec {
    /// The names of this cluster's ingresses.
    pub fn ingress_names(&self) -> impl Iterator<Item = &str> {
        self.ingresses.iter().map(|i| i.name.as_str())
    }
}

/// How the clusters of a rollout move (`spec.clusterPolicy`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterPolicy {
    /// Every cluster steps together; a step passes only when every cluster's verdict passes.
    #[default]
    All,
    /// Cluster by cluster, in `spec.clusters` order: the next cluster starts at its first step
    /// when the previous one is promoted; a failure in any wave rolls back every cluster.
    Waves,
}

impl ClusterPolicy {
    /// Parses `spec.clusterPolicy` (`all` or `waves`).
    ///
    /// # Errors
    /// A [`FieldError`] at `path` for any other value.
    pub fn parse(value: &str, path: &str) -> Result<Self, FieldError> {
        match value {
            "all" => Ok(Self::All),
            "waves" => Ok(Self::Waves),
            other => Err(FieldError::new(
                path,
                format!("unknown cluster policy {other:?}; expected all or waves"),
            )),
        }
    }

    /// The policy's name in the spec.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Waves => "waves",
        }
    }
}

impl DesiredRoute {
    /// The route member cluster `index` (its place in `spec.clusters`) serves when the rollout
    /// asks for `self`. Without a wave, every cluster serves `self`. In wave `w`: the clusters
    /// of earlier waves serve the canary fully (they were promoted), cluster `w` serves `self`,
    /// the later ones the primary; neither of those carries matches, mirroring or a cookie.
    pub fn for_cluster(&self, index: usize) -> DesiredRoute {
        let Some(wave) = self.wave else {
            return self.clone();
        };
        let whole = |canary_weight: u8| DesiredRoute {
            seq: self.seq,
            canary_weight,
            primary_weight: 100 - canary_weight,
            mirror_percent: 0,
            matches: Vec::new(),
            session_affinity: None,
            wave: None,
        };
        match index.cmp(&wave) {
            std::cmp::Ordering::Less => whole(100),
            std::cmp::Ordering::Equal => DesiredRoute {
                wave: None,
                ..self.clone()
            },
            std::cmp::Ordering::Greater => whole(0),
        }
    }

    /// The split member cluster `index` must read back for this route
    /// ([`DesiredRoute::for_cluster`]).
    pub fn split_for_cluster(&self, index: usize) -> ObservedSplit {
        let route = self.for_cluster(index);
        ObservedSplit {
            canary_weight: route.canary_weight,
            primary_weight: route.primary_weight,
            mirror_percent: route.mirror_percent,
        }
    }
}

/// Checks `clusters` (at `path`, e.g. `spec.clusters`): each name one subject token, no name
/// twice, each cluster with at least one ingress and no ingress twice. Returns every problem.
pub fn validate(clusters: &[ClusterSpec], path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, cluster) in clusters.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(problem) = name_problem(&cluster.name) {
            errors.push(FieldError::new(format!("{at}.name"), problem));
        }
        if clusters[..i].iter().any(|c| c.name == cluster.name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("cluster {:?} listed twice", cluster.name),
            ));
        }
        if cluster.ingresses.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.ingresses"),
                "a cluster needs at least one ingress",
            ));
        }
        for (j, ingress) in cluster.ingresses.iter().enumerate() {
            if cluster.ingresses[..j].contains(ingress) {
                errors.push(FieldError::new(
                    format!("{at}.ingresses[{j}].name"),
                    format!("ingress {:?} listed twice", ingress.name),
                ));
            }
        }
    }
    errors
}

/// Why `name` cannot name a cluster, if it cannot.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("must be at most 63 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Some("only ASCII letters, digits, '-' and '_' are allowed")
    } else {
        None
    }
}

/// Folds the clusters' verdicts for request `seq` into one, under `policy`. `answers` has one
/// entry per member cluster: its verdict, or `None` when it gave none (its link is down or its
/// analyzers did not answer in time).
///
/// Under [`ClusterPolicy::Waves`] `answers` holds the current wave's cluster only (the only
/// one asked), folded by the same rules.
///
/// Under [`ClusterPolicy::All`]: any `Fail` fails the step; else any missing answer or `Error`
/// is an `Error` (a halt, never a promotion); else any `Inconclusive` is inconclusive; else it
/// passes. A rollback or fail-fast asked by any cluster is kept; early promotion only when every
/// cluster asks for it; undecided when any cluster is undecided. An empty `answers` is an
/// `Error`: nothing was analysed.
pub fn fold_verdicts(
    policy: ClusterPolicy,
    seq: u64,
    answers: &[(&str, Option<Verdict>)],
) -> Verdict {
    // Both policies fold what was asked by the same rules: waves asks one cluster.
    let (ClusterPolicy::All | ClusterPolicy::Waves) = policy;
    let mut checks = Vec::new();
    let (mut failed, mut errored, mut inconclusive) = (false, answers.is_empty(), false);
    let (mut fail_fast, mut rollback_requested, mut undecided) = (false, false, false);
    let mut early_promote = !answers.is_empty();
    for (cluster, answer) in answers {
        let Some(verdict) = answer else {
            errored = true;
            early_promote = false;
            checks.push(CheckResult {
                name: format!("{cluster}/verdict"),
                outcome: Outcome::Error,
                value: None,
                message: format!("no verdict from cluster {cluster}"),
            });
            continue;
        };
        match verdict.outcome {
            Outcome::Pass => {}
            Outcome::Fail => failed = true,
            Outcome::Error => errored = true,
            Outcome::Inconclusive => inconclusive = true,
        }
        fail_fast |= verdict.fail_fast;
        rollback_requested |= verdict.rollback_requested;
        undecided |= verdict.undecided;
        early_promote &= verdict.early_promote;
        checks.extend(verdict.checks.iter().map(|check| CheckResult {
            name: format!("{cluster}/{}", check.name),
            ..check.clone()
        }));
    }
    let outcome = if failed {
        Outcome::Fail
    } else if errored {
        Outcome::Error
    } else if inconclusive {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    };
    Verdict {
        seq,
        outcome,
        checks,
        fail_fast,
        early_promote: early_promote && outcome == Outcome::Pass,
        rollback_requested,
        undecided,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(outcome: Outcome, check: &str) -> Verdict {
        Verdict {
            seq: 7,
            outcome,
            checks: vec![CheckResult {
                name: check.into(),
                outcome,
                value: Some(1.0),
                message: String::new(),
            }],
            fail_fast: false,
            early_promote: false,
            rollback_requested: false,
            undecided: false,
        }
    }

    fn fold(answers: &[(&str, Option<Verdict>)]) -> Verdict {
        fold_verdicts(ClusterPolicy::All, 7, answers)
    }

    #[test]
    fn a_step_passes_only_when_every_cluster_passes() {
        let both = fold(&[
            ("eu", Some(verdict(Outcome::Pass, "error-rate"))),
            ("us", Some(verdict(Outcome::Pass, "error-rate"))),
        ]);
        assert_eq!(both.outcome, Outcome::Pass);
        assert_eq!(both.seq, 7);
        let names: Vec<_> = both.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["eu/error-rate", "us/error-rate"]);
        for other in [Outcome::Fail, Outcome::Error, Outcome::Inconclusive] {
            for (eu, us) in [(Outcome::Pass, other), (other, Outcome::Pass)] {
                let folded = fold(&[
                    ("eu", Some(verdict(eu, "error-rate"))),
                    ("us", Some(verdict(us, "error-rate"))),
                ]);
                assert_eq!(folded.outcome, other, "eu {eu:?}, us {us:?}");
            }
        }
    }

    #[test]
    fn one_failing_cluster_fails_the_step_for_all_and_is_named() {
        let folded = fold(&[
            ("eu", Some(verdict(Outcome::Pass, "error-rate"))),
            ("us", Some(verdict(Outcome::Fail, "error-rate"))),
        ]);
        assert_eq!(folded.outcome, Outcome::Fail);
        let failed: Vec<_> = folded
            .checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["us/error-rate"]);
        // A failure beats a cluster that did not answer: the step is failed, not halted.
        let folded = fold(&[
            ("eu", None),
            ("us", Some(verdict(Outcome::Fail, "error-rate"))),
        ]);
        assert_eq!(folded.outcome, Outcome::Fail);
    }

    #[test]
    fn a_cluster_without_an_answer_halts_and_never_promotes() {
        let mut eager = verdict(Outcome::Pass, "error-rate");
        eager.early_promote = true;
        let folded = fold(&[("eu", Some(eager.clone())), ("us", None)]);
        assert_eq!(folded.outcome, Outcome::Error);
        assert!(!folded.early_promote);
        assert!(folded.checks.iter().any(|c| c.name == "us/verdict"));
        assert_eq!(fold(&[]).outcome, Outcome::Error);
        // Early promotion only when every cluster asks for it.
        let plain = verdict(Outcome::Pass, "error-rate");
        assert!(!fold(&[("eu", Some(eager.clone())), ("us", Some(plain))]).early_promote);
        assert!(fold(&[("eu", Some(eager.clone())), ("us", Some(eager))]).early_promote);
    }

    #[test]
    fn any_clusters_rollback_or_fail_fast_is_kept() {
        let mut asks = verdict(Outcome::Pass, "hook");
        asks.rollback_requested = true;
        asks.fail_fast = true;
        let folded = fold(&[
            ("eu", Some(verdict(Outcome::Pass, "hook"))),
            ("us", Some(asks)),
        ]);
        assert!(folded.rollback_requested && folded.fail_fast);
    }

    #[test]
    fn validation_names_the_field() {
        let cluster = |name: &str, ingresses: &[&str]| ClusterSpec {
            name: name.into(),
            ingresses: ingresses
                .iter()
                .map(|i| IngressRef {
                    name: (*i).to_owned(),
                })
                .collect(),
            ..ClusterSpec::default()
        };
        assert!(
            validate(
                &[cluster("eu", &["edge"]), cluster("us", &["edge"])],
                "spec.clusters"
            )
            .is_empty()
        );
        let errors = validate(
            &[
                cluster("eu", &["edge", "edge"]),
                cluster("eu", &[]),
                cluster("e.u", &["edge"]),
            ],
            "spec.clusters",
        );
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.clusters[0].ingresses[1].name",
                "spec.clusters[1].name",
                "spec.clusters[1].ingresses",
                "spec.clusters[2].name",
            ]
        );
        assert_eq!(
            ClusterPolicy::parse("all", "spec.clusterPolicy"),
            Ok(ClusterPolicy::All)
        );
        assert_eq!(
            ClusterPolicy::parse("waves", "spec.clusterPolicy"),
            Ok(ClusterPolicy::Waves)
        );
        let err = ClusterPolicy::parse("some", "spec.clusterPolicy").unwrap_err();
        assert_eq!(err.path, "spec.clusterPolicy");
        assert!(err.message.contains("expected all or waves"), "{err}");
    }

    #[test]
    fn in_a_wave_earlier_clusters_serve_the_canary_and_later_ones_the_primary() {
        let route = DesiredRoute {
            seq: 9,
            canary_weight: 25,
            primary_weight: 75,
            mirror_percent: 10,
            matches: Vec::new(),
            session_affinity: None,
            wave: Some(1),
        };
        let splits: Vec<_> = (0..3)
            .map(|i| {
                let r = route.for_cluster(i);
                assert_eq!((r.seq, r.wave), (9, None));
                (r.canary_weight, r.primary_weight, r.mirror_percent)
            })
            .collect();
        assert_eq!(splits, [(100, 0, 0), (25, 75, 10), (0, 100, 0)]);
        assert_eq!(route.split_for_cluster(2).primary_weight, 100);
        // Without a wave (policy all, a rollback) every cluster serves the route itself.
        let all = DesiredRoute {
            wave: None,
            ..route
        };
        for i in 0..3 {
            assert_eq!(all.for_cluster(i), all);
        }
    }
}
