//! Every name on the bus, defined once: subjects, streams, KV buckets, consumers, queue groups,
//! and the shapes of KV keys and idempotency keys.
//!
//! `docs/bus.md` turns this module into a table of who publishes and subscribes what, and the
//! NATS permissions each service needs. Change both together.
//!
//! Namespaces, rollout names and ingress names become subject tokens and KV key parts, so
//! they are validated: ASCII letters, digits, `-` and `_` only. That excludes `.` (a token
//! separator), `*` and `>` (wildcards), whitespace, and everything a KV key rejects. (A
//! Kubernetes object name with a `.` must be mapped before it reaches the bus.)

use std::fmt::Display;

use crate::BusError;

/// Stream of audit events: CloudEvents 1.0 JSON, one subject per rollout, file storage.
pub const STREAM_EVENTS: &str = "AVIARY_EVENTS";
/// Subjects of [`STREAM_EVENTS`]; see [`events_subject`].
pub const EVENTS_SUBJECTS: &str = "aviary.events.>";
/// Stream of dead letters: messages a consumer could not decode, kept for inspection.
pub const STREAM_DEAD: &str = "AVIARY_DEAD";
/// Subjects of [`STREAM_DEAD`]; see [`dead_letter_subject`].
pub const DEAD_SUBJECTS: &str = "aviary.dead.>";

/// KV bucket of rollout records (spec + status), key [`rollout_key`]. Written only by CAS.
pub const BUCKET_ROLLOUTS: &str = "aviary_rollouts";
/// KV bucket of the desired route per ingress and rollout, key [`route_key`]. Router agents
/// reconcile their data plane to it on start and on a timer.
pub const BUCKET_ROUTES: &str = "aviary_routes";
/// KV bucket of ownership leases, key [`lease_key`]; entries expire after the bucket's max age
/// unless renewed.
pub const BUCKET_LEASES: &str = "aviary_leases";
/// KV bucket of gate state (manual approvals, confirm-* webhooks), key [`gate_key`].
pub const BUCKET_GATES: &str = "aviary_gates";
/// KV bucket of router-agent capabilities, key [`agent_key`] (the ingress).
pub const BUCKET_AGENTS: &str = "aviary_agents";
/// Every bucket [`crate::setup`] creates.
pub const BUCKETS: [&str; 5] = [
    BUCKET_ROLLOUTS,
    BUCKET_ROUTES,
    BUCKET_LEASES,
    BUCKET_GATES,
    BUCKET_AGENTS,
];
/// The notifier's own KV bucket of delivered `(provider, event id)` pairs, which it creates
/// itself (with its de-duplication TTL); named here for [`crate::permissions`].
pub const BUCKET_NOTIFIED: &str = "aviary_notified";

/// Prefix of route commands; one subject per ingress, see [`route_subject`]. Request/reply:
/// the agent answers with the split it observed on the data plane.
pub const ROUTE_PREFIX: &str = "aviary.route";
/// Every route subject (for permissions and monitoring).
pub const ROUTE_ALL: &str = "aviary.route.>";

/// Prefix of workload commands (workload mode), one subject per rollout, see
/// [`workload_subject`]. Request/reply: the acting controller replica answers.
pub const WORKLOAD_PREFIX: &str = "aviary.workload";
/// Every workload subject: the controller subscribes to it.
pub const WORKLOAD_ALL: &str = "aviary.workload.>";
/// Queue group of the controller replicas on [`WORKLOAD_ALL`].
pub const QUEUE_CONTROLLER: &str = "aviary-controller";

/// Analysis requests, request/reply: the analyzer answers with a verdict.
pub const ANALYSIS_REQUEST: &str = "aviary.analysis.request";
/// Queue group of the analyzers on [`ANALYSIS_REQUEST`]: each request goes to one analyzer.
pub const QUEUE_ANALYZER: &str = "aviary-analyzer";

/// Prefix of the subjects qualified by member cluster, see [`cluster_route_subject`] and
/// [`analysis_subject`]: everything a member cluster's router agents and analyzers serve is
/// under `aviary.cluster.<cluster>.>`, so a leaf link carries exactly that subtree (and
/// replies). Single-cluster deployments keep the unqualified subjects.
pub const CLUSTER_PREFIX: &str = "aviary.cluster";

/// A member cluster's name as given to `--cluster` (clap's `value_parser` of the router
/// agent's and the analyzer's flag): one subject token.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad cluster name.
pub fn parse_cluster(value: &str) -> Result<String, BusError> {
    token("cluster", value).map(str::to_owned)
}

/// `aviary.cluster.<cluster>.>`: every subject served in member cluster `cluster` (for
/// leaf-link permissions).
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad cluster name.
pub fn cluster_subjects(cluster: &str) -> Result<String, BusError> {
    Ok(format!("{CLUSTER_PREFIX}.{}.>", token("cluster", cluster)?))
}

/// The route subject of `ingress`: [`route_subject`] without a cluster, else
/// `aviary.cluster.<cluster>.route.<ingress>`, served by that cluster's router agent.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad cluster or ingress name.
pub fn cluster_route_subject(cluster: Option<&str>, ingress: &str) -> Result<String, BusError> {
    match cluster {
        None => route_subject(ingress),
        Some(cluster) => Ok(format!(
            "{CLUSTER_PREFIX}.{}.route.{}",
            token("cluster", cluster)?,
            token("ingress", ingress)?
        )),
    }
}

/// The analysis request subject: [`ANALYSIS_REQUEST`] without a cluster, else
/// `aviary.cluster.<cluster>.analysis.request`, served by that cluster's analyzers (in
/// [`QUEUE_ANALYZER`] as well) against that cluster's metrics backend.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad cluster name.
pub fn analysis_subject(cluster: Option<&str>) -> Result<String, BusError> {
    match cluster {
        None => Ok(ANALYSIS_REQUEST.to_owned()),
        Some(cluster) => Ok(format!(
            "{CLUSTER_PREFIX}.{}.analysis.request",
            token("cluster", cluster)?
        )),
    }
}

/// Prefix of wake-ups: a nudge to a rollout's owner after a control-API command was recorded,
/// so it acts now rather than at its next tick. See [`wake_subject`].
pub const WAKE_PREFIX: &str = "aviary.rollout.wake";
/// Every wake-up subject; each scheduler replica subscribes to it and ignores rollouts it
/// does not own.
pub const WAKE_ALL: &str = "aviary.rollout.wake.>";

/// Durable consumer of the notifier on [`STREAM_EVENTS`]; shared by notifier replicas so each
/// event is handled once.
pub const CONSUMER_NOTIFIER: &str = "aviary-notifier";

/// Prefix of reply inboxes (the NATS default). Aviary's connections use one per service
/// instead ([`inbox_prefix`]), so a service can be allowed its own replies and no one else's.
pub const INBOX_PREFIX: &str = "_INBOX";

/// The reply-inbox prefix of `service`'s connections (`_INBOX_aviary-scheduler`): it may
/// subscribe to `<prefix>.>`, and responders answer there through `allow_responses`.
pub fn inbox_prefix(service: &str) -> String {
    format!("{INBOX_PREFIX}_{service}")
}

/// Checks that `token` can be used as one subject token / KV key part.
///
/// # Errors
/// [`BusError::InvalidToken`] naming `what` when it is empty or has a character other than
/// ASCII letters, digits, `-` or `_`.
pub fn token<'a>(what: &'static str, token: &'a str) -> Result<&'a str, BusError> {
    let reason = if token.is_empty() {
        Some("must not be empty")
    } else if token.contains('.') {
        Some("must not contain '.' (NATS token separator)")
    } else if token.contains(['*', '>']) {
        Some("must not contain NATS wildcards '*' or '>'")
    } else if token.chars().any(char::is_whitespace) {
        Some("must not contain whitespace")
    } else if !token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Some("only ASCII letters, digits, '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(token),
        Some(reason) => Err(BusError::InvalidToken {
            what,
            token: token.to_owned(),
            reason,
        }),
    }
}

/// `aviary.events.<namespace>.<name>`: the audit events of one rollout, in order.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace or name.
pub fn events_subject(namespace: &str, name: &str) -> Result<String, BusError> {
    Ok(format!(
        "aviary.events.{}.{}",
        token("namespace", namespace)?,
        token("name", name)?
    ))
}

/// `aviary.events.<namespace>.*`: a filter for every rollout of one namespace.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace.
pub fn events_namespace_filter(namespace: &str) -> Result<String, BusError> {
    Ok(format!(
        "aviary.events.{}.*",
        token("namespace", namespace)?
    ))
}

/// `aviary.dead.<origin>`: where a message that arrived on `origin` goes when it cannot be
/// processed. `origin` is a concrete subject that already arrived, so it is not re-validated.
pub fn dead_letter_subject(origin: &str) -> String {
    format!("aviary.dead.{origin}")
}

/// `aviary.workload.<namespace>.<name>`: workload commands of one rollout.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace or name.
pub fn workload_subject(namespace: &str, name: &str) -> Result<String, BusError> {
    Ok(format!(
        "{WORKLOAD_PREFIX}.{}.{}",
        token("namespace", namespace)?,
        token("name", name)?
    ))
}

/// `aviary.route.<ingress>`: route commands for the router agent that owns `ingress`.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad ingress name.
pub fn route_subject(ingress: &str) -> Result<String, BusError> {
    Ok(format!("{ROUTE_PREFIX}.{}", token("ingress", ingress)?))
}

/// `aviary.rollout.wake.<namespace>.<name>`.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace or name.
pub fn wake_subject(namespace: &str, name: &str) -> Result<String, BusError> {
    Ok(format!(
        "{WAKE_PREFIX}.{}.{}",
        token("namespace", namespace)?,
        token("name", name)?
    ))
}

/// `<namespace>.<name>`: key of a rollout in [`BUCKET_ROLLOUTS`].
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace or name.
pub fn rollout_key(namespace: &str, name: &str) -> Result<String, BusError> {
    Ok(format!(
        "{}.{}",
        token("namespace", namespace)?,
        token("name", name)?
    ))
}

/// `<namespace>.<name>`: key of a rollout's lease in [`BUCKET_LEASES`].
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace or name.
pub fn lease_key(namespace: &str, name: &str) -> Result<String, BusError> {
    rollout_key(namespace, name)
}

/// `<ingress>.<namespace>.<name>`: key of the desired route of a rollout on one ingress in
/// [`BUCKET_ROUTES`]; a router agent watches `<ingress>.>`.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad ingress, namespace or name.
pub fn route_key(ingress: &str, namespace: &str, name: &str) -> Result<String, BusError> {
    Ok(format!(
        "{}.{}.{}",
        token("ingress", ingress)?,
        token("namespace", namespace)?,
        token("name", name)?
    ))
}

/// `<ingress>.>`: the filter a router agent watches in [`BUCKET_ROUTES`].
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad ingress.
pub fn route_key_filter(ingress: &str) -> Result<String, BusError> {
    Ok(format!("{}.>", token("ingress", ingress)?))
}

/// `<namespace>.<name>.<gate>`: key of one gate of a rollout in [`BUCKET_GATES`].
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace, name or gate.
pub fn gate_key(namespace: &str, name: &str, gate: &str) -> Result<String, BusError> {
    Ok(format!(
        "{}.{}.{}",
        token("namespace", namespace)?,
        token("name", name)?,
        token("gate", gate)?
    ))
}

/// `<ingress>`: key of a router agent's capabilities in [`BUCKET_AGENTS`].
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad ingress.
pub fn agent_key(ingress: &str) -> Result<String, BusError> {
    token("ingress", ingress).map(str::to_owned)
}

/// `<namespace>.<name>/<generation>/<step>`: the idempotency key of a message that causes
/// work (JetStream `Nats-Msg-Id`), so a redelivered or re-sent message is harmless.
///
/// When one step causes several messages of one kind (e.g. two audit events), make `step`
/// distinguish them (`"3/halted"`); the key only has to be equal for equal messages.
///
/// # Errors
/// [`BusError::InvalidToken`] for a bad namespace or name.
pub fn idempotency_key(
    namespace: &str,
    name: &str,
    generation: u64,
    step: impl Display,
) -> Result<String, BusError> {
    Ok(format!(
        "{}/{generation}/{step}",
        rollout_key(namespace, name)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusErrorKind;

    #[test]
    fn shapes() -> Result<(), BusError> {
        assert_eq!(
            events_subject("test", "podinfo")?,
            "aviary.events.test.podinfo"
        );
        assert_eq!(route_subject("edge")?, "aviary.route.edge");
        assert_eq!(cluster_route_subject(None, "edge")?, "aviary.route.edge");
        assert_eq!(
            cluster_route_subject(Some("eu"), "edge")?,
            "aviary.cluster.eu.route.edge"
        );
        assert_eq!(analysis_subject(None)?, ANALYSIS_REQUEST);
        assert_eq!(
            analysis_subject(Some("eu"))?,
            "aviary.cluster.eu.analysis.request"
        );
        assert_eq!(cluster_subjects("eu")?, "aviary.cluster.eu.>");
        assert_eq!(
            wake_subject("test", "podinfo")?,
            "aviary.rollout.wake.test.podinfo"
        );
        assert_eq!(rollout_key("test", "podinfo")?, "test.podinfo");
        assert_eq!(route_key("edge", "test", "podinfo")?, "edge.test.podinfo");
        assert_eq!(
            gate_key("test", "podinfo", "approval")?,
            "test.podinfo.approval"
        );
        assert_eq!(
            idempotency_key("test", "podinfo", 3, 5)?,
            "test.podinfo/3/5"
        );
        assert_eq!(
            dead_letter_subject("aviary.route.edge"),
            "aviary.dead.aviary.route.edge"
        );
        Ok(())
    }

    #[test]
    fn rejects_tokens_that_would_change_the_subject() {
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb", "ü", "a/b"] {
            let err = events_subject("test", bad).expect_err(bad);
            assert_eq!(err.kind(), BusErrorKind::InvalidToken, "{bad:?}");
            let err = route_key(bad, "test", "x").expect_err(bad);
            assert!(matches!(
                err,
                BusError::InvalidToken {
                    what: "ingress",
                    ..
                }
            ));
        }
        for bad in ["", "e.u", "*", ">", "e u"] {
            for err in [
                cluster_route_subject(Some(bad), "edge").expect_err(bad),
                analysis_subject(Some(bad)).expect_err(bad),
                cluster_subjects(bad).expect_err(bad),
            ] {
                assert!(
                    matches!(
                        err,
                        BusError::InvalidToken {
                            what: "cluster",
                            ..
                        }
                    ),
                    "{bad:?}: {err}"
                );
            }
        }
        assert!(token("name", "pod-info_v2").is_ok());
    }
}
