//! Route and workload commands: the machine's desired route as each ingress's command, and the
//! agents' acks back.

use aviary_core::machine;
use aviary_core::route::RouteSelector;
use aviary_core::spec::{MatchRule, StringMatch, Target};
use aviary_proto as pb;

use crate::effects::IngressTarget;
use crate::record::RolloutRecord;

fn backend(target: &Target) -> pb::Backend {
    pb::Backend {
        name: target.name.clone(),
        endpoints: target.endpoints.clone(),
    }
}

fn string_match(m: &StringMatch) -> pb::StringMatch {
    use pb::string_match::Kind;
    let kind = match m {
        StringMatch::Exact(v) => Kind::Exact(v.clone()),
        StringMatch::Prefix(v) => Kind::Prefix(v.clone()),
        StringMatch::Suffix(v) => Kind::Suffix(v.clone()),
        StringMatch::Regex(v) => Kind::Regex(v.clone()),
    };
    pb::StringMatch { kind: Some(kind) }
}

fn match_rule(rule: &MatchRule) -> pb::MatchRule {
    let headers = rule.headers.iter().map(|(name, m)| pb::MatchCondition {
        kind: pb::match_condition::Kind::Header as i32,
        name: name.clone(),
        value: Some(string_match(m)),
    });
    let cookies = rule.cookies.iter().map(|(name, m)| pb::MatchCondition {
        kind: pb::match_condition::Kind::Cookie as i32,
        name: name.clone(),
        value: Some(string_match(m)),
    });
    pb::MatchRule {
        conditions: headers.chain(cookies).collect(),
    }
}

/// The route command for a machine route: every ingress gets the same split, for the requests
/// the spec's [`RouteSelector`] selects.
pub fn route_command(record: &RolloutRecord, route: &machine::DesiredRoute) -> pb::RouteCommand {
    let spec = &record.rollout.spec;
    let selector = RouteSelector::of(spec);
    let rollout = pb::RolloutRef::new(record.namespace(), record.name());
    let key = format!(
        "{}/{}/{}/r{}",
        record.namespace(),
        record.name(),
        record.generation,
        route.seq
    );
    pb::RouteCommand {
        idempotency_key: key,
        generation: record.generation,
        step: u32::try_from(record.status.step).unwrap_or(u32::MAX),
        route: Some(pb::DesiredRoute {
            rollout: Some(rollout),
            ingress: String::new(),
            primary: Some(backend(&spec.primary)),
            canary: Some(backend(&spec.canary)),
            primary_weight: u32::from(route.primary_weight),
            canary_weight: u32::from(route.canary_weight),
            mirror_percent: u32::from(route.mirror_percent),
            matches: route.matches.iter().map(match_rule).collect(),
            session_affinity: route
                .session_affinity
                .as_ref()
                .map(|a| pb::SessionAffinity {
                    cookie_name: a.cookie_name.clone(),
                    cookie_value: a.cookie_value.clone(),
                    max_age_seconds: u32::try_from(a.max_age_seconds.max(0)).unwrap_or(u32::MAX),
                    expired: a.max_age_seconds < 0,
                    primary_cookie_name: a.primary_cookie_name.clone().unwrap_or_default(),
                    primary_max_age_seconds: u32::try_from(a.primary_max_age_seconds.max(0))
                        .unwrap_or(u32::MAX),
                }),
            hosts: selector.hosts,
            path_prefix: selector.path_prefix,
        }),
    }
}

/// Each ingress's ack as the machine reads it (a value beyond a `u8` reads as 255, which no
/// split asks for, so it fails the check).
pub fn ingress_splits(acks: &[pb::RouteAck]) -> Vec<machine::IngressSplit> {
    let percent = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
    acks.iter()
        .map(|ack| machine::IngressSplit {
            ingress: ack.ingress.clone(),
            observed: machine::ObservedSplit {
                canary_weight: percent(ack.canary_weight),
                primary_weight: percent(ack.primary_weight),
                mirror_percent: percent(ack.mirror_percent),
            },
            confirmed_at_ms: u64::try_from(ack.confirmed_at_ms).unwrap_or(0),
        })
        .collect()
}

/// The workload command for `op` (workload mode); idempotency key `<ns>/<name>/<gen>/w<seq>`.
pub fn workload_command(
    record: &RolloutRecord,
    seq: u64,
    op: machine::WorkloadOp,
) -> pb::WorkloadCommand {
    let op = match op {
        machine::WorkloadOp::ScaleCanaryUp => pb::WorkloadOp::ScaleCanaryUp,
        machine::WorkloadOp::PromotePrimary => pb::WorkloadOp::PromotePrimary,
        machine::WorkloadOp::ScaleCanaryDown => pb::WorkloadOp::ScaleCanaryDown,
    };
    pb::WorkloadCommand {
        idempotency_key: format!(
            "{}/{}/{}/w{seq}",
            record.namespace(),
            record.name(),
            record.generation
        ),
        rollout: Some(pb::RolloutRef::new(record.namespace(), record.name())),
        generation: record.generation,
        op: op as i32,
        canary_revision: record
            .rollout
            .spec
            .canary
            .revision
            .clone()
            .unwrap_or_default(),
    }
}

/// The route command that finalises a promotion (request `seq`): the promoted canary's
/// endpoints become the primary's, at 100 %.
pub fn finalise_command(record: &RolloutRecord, seq: u64) -> pb::RouteCommand {
    let spec = &record.rollout.spec;
    // The run is over: with session affinity, the data plane keeps expiring this run's cookie
    // (`Max-Age=-1`) after the promotion too, so no client keeps it.
    let session_affinity = spec
        .analysis
        .session_affinity
        .as_ref()
        .zip(record.status.session_cookie.as_ref())
        .map(|(sa, value)| machine::CookieAffinity {
            cookie_name: sa.cookie_name.clone(),
            cookie_value: value.clone(),
            max_age_seconds: -1,
            primary_cookie_name: None,
            primary_max_age_seconds: 0,
        });
    let route = machine::DesiredRoute {
        seq,
        canary_weight: 0,
        primary_weight: 100,
        mirror_percent: 0,
        matches: Vec::new(),
        session_affinity,
        wave: None,
    };
    let mut command = route_command(record, &route);
    // The roles swap: the canary serves everything as the primary, and the old primary stays
    // configured at weight 0 until the next rollout replaces it.
    if let Some(r) = command.route.as_mut() {
        r.primary = Some(backend(&spec.canary));
        r.canary = Some(backend(&spec.primary));
    }
    command.idempotency_key = format!(
        "{}/{}/{}/f{seq}",
        record.namespace(),
        record.name(),
        record.generation
    );
    command
}

/// What `route` sends to each ingress of the rollout: every ingress the same command, except
/// under policy `waves`, where each cluster gets its part of the route
/// ([`machine::DesiredRoute::for_cluster`]).
pub fn route_sends(
    record: &RolloutRecord,
    route: &machine::DesiredRoute,
) -> Vec<(IngressTarget, pb::RouteCommand)> {
    let clusters = &record.rollout.spec.clusters;
    let mut commands: Vec<Option<pb::RouteCommand>> = vec![None; clusters.len().max(1)];
    record
        .ingresses()
        .into_iter()
        .map(|target| {
            let at = target
                .cluster
                .as_ref()
                .and_then(|name| clusters.iter().position(|c| &c.name == name))
                .unwrap_or(0);
            let command = commands[at]
                .get_or_insert_with(|| route_command(record, &route.for_cluster(at)))
                .clone();
            (target, command)
        })
        .collect()
}

/// The finalising command ([`finalise_command`]) for every ingress of the rollout.
pub fn finalise_sends(record: &RolloutRecord, seq: u64) -> Vec<(IngressTarget, pb::RouteCommand)> {
    let command = finalise_command(record, seq);
    record
        .ingresses()
        .into_iter()
        .map(|target| (target, command.clone()))
        .collect()
}
