//! The "do" half of the scheduler: carries out what the state machine decided, each with a
//! timeout, and reports the outcome so it can be fed back as the machine's next input.
//!
//! - Routes: the desired split is written to the routes bucket (the state router agents
//!   reconcile to), then sent to every ingress's agent; the step counts as started only when
//!   every agent acknowledged the split it observed. A missing or failed ack is reported, never
//!   ignored.
//! - Analysis: one request to the analyzer queue group, answered with a verdict.
//! - Member clusters (a rollout with `spec.clusters`): a cluster's ingress gets its command on
//!   the cluster-qualified subject, and its desired route is written to the routes bucket in
//!   that cluster's own JetStream domain (the one its router agents reconcile from, reached
//!   over the leaf link), never to the hub's, where an agent of the same ingress name would
//!   take it. Each cluster's analysis goes to that cluster's analyzers. A cluster whose link is
//!   down gets neither write nor command through: its ingresses do not confirm, the step halts.
//! - Audit: events go to the events stream with their id as `Nats-Msg-Id`, so a re-publish after
//!   a takeover is dropped as a duplicate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream;
use aviary_bus::kv::Bucket;
use aviary_bus::typed::{self, Proto};
use aviary_bus::{BusError, names};
use aviary_proto::events::AuditEvent;
use aviary_proto::{
    AgentCapabilities, AnalysisRequest, DesiredRoute, RouteAck, RouteCommand, Verdict, WorkloadAck,
    WorkloadCommand,
};
use futures::future::join_all;
use tokio::sync::Mutex;

/// One ingress a route goes to: a single-cluster ingress, or an ingress of a member cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressTarget {
    /// The member cluster (`None`: single-cluster, the unqualified subjects and hub KV).
    pub cluster: Option<String>,
    /// The ingress name its router agent owns.
    pub ingress: String,
    /// The endpoints of a backend, by its name (`spec.primary.name`, `spec.canary.name`), as
    /// this ingress reaches them, in place of the route's; a backend not named here keeps the
    /// route's. By name, not by side: the finalising route swaps the sides.
    pub endpoints: BTreeMap<String, Vec<String>>,
}

impl IngressTarget {
    /// How acks, halts and status name this ingress: `<cluster>/<ingress>`, or the ingress.
    pub fn label(&self) -> String {
        match &self.cluster {
            Some(cluster) => format!("{cluster}/{}", self.ingress),
            None => self.ingress.clone(),
        }
    }
}

/// Every ingress acknowledged the split. The step's analysis window starts when the scheduler
/// receives the last ack, on its own clock: each ack's `confirmed_at_ms` is the agent's clock
/// and is only shown (a member cluster's skew never moves a window).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfirmed {
    /// Each ingress's ack.
    pub acks: Vec<RouteAck>,
}

/// Why a route could not be confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteFailed(pub String);

/// Talks to the other services on behalf of the drivers.
#[derive(Clone)]
pub struct Effects {
    client: Client,
    js: jetstream::Context,
    routes: Bucket<DesiredRoute, Proto>,
    route_timeout: Duration,
    analysis_timeout: Duration,
    /// The routes bucket of each member cluster's JetStream domain, opened on first use.
    cluster_routes: Arc<Mutex<HashMap<String, Bucket<DesiredRoute, Proto>>>>,
}

impl Effects {
    /// Effects over `client`, with the routes bucket opened and the given timeouts.
    ///
    /// Fails when the routes bucket cannot be opened.
    pub async fn new(
        client: Client,
        route_timeout: Duration,
        analysis_timeout: Duration,
    ) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let routes = Bucket::open(&js, names::BUCKET_ROUTES).await?;
        Ok(Self {
            client,
            js,
            routes,
            route_timeout,
            analysis_timeout,
            cluster_routes: Arc::default(),
        })
    }

    /// The NATS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Records each send's route as the desired state of its ingress, sends it to the ingress's
    /// agent, and waits for all acks. Each ack names its ingress by [`IngressTarget::label`].
    /// The sends of one route differ only where a cluster's part of it does (policy waves) and
    /// in each cluster's endpoints.
    ///
    /// Errors: [`RouteFailed`] naming each ingress that did not confirm and why (no agent, timeout,
    /// an apply error, or an observed split that differs from the one asked of it).
    pub async fn apply_route(
        &self,
        sends: &[(IngressTarget, RouteCommand)],
    ) -> Result<RouteConfirmed, RouteFailed> {
        let sends = sends.iter().map(|(target, command)| async move {
            let label = target.label();
            let mut command = command.clone();
            let Some(route) = command.route.as_mut() else {
                return (label, Err("route command without a route".to_owned()));
            };
            route.ingress = target.ingress.clone();
            for backend in [route.primary.as_mut(), route.canary.as_mut()]
                .into_iter()
                .flatten()
            {
                if let Some(endpoints) = target.endpoints.get(&backend.name) {
                    backend.endpoints.clone_from(endpoints);
                }
            }
            let (want_primary, want_canary) = (route.primary_weight, route.canary_weight);
            let rollout = route.rollout.clone().unwrap_or_default();
            let result = match self
                .send_route(target, &rollout.namespace, &rollout.name, &command)
                .await
            {
                Ok(ack) if !ack.ok => Err(ack.error),
                Ok(ack)
                    if ack.canary_weight != want_canary || ack.primary_weight != want_primary =>
                {
                    Err(format!(
                        "observed {}/{} instead of {want_primary}/{want_canary}",
                        ack.primary_weight, ack.canary_weight,
                    ))
                }
                Ok(ack) => Ok(RouteAck {
                    ingress: label.clone(),
                    ..ack
                }),
                Err(error) => Err(error.to_string()),
            };
            (label, result)
        });
        let mut failures = Vec::new();
        let mut acks = Vec::new();
        for (ingress, result) in join_all(sends).await {
            match result {
                Ok(ack) => acks.push(ack),
                Err(error) => failures.push(format!("{ingress}: {error}")),
            }
        }
        if !failures.is_empty() {
            return Err(RouteFailed(failures.join("; ")));
        }
        Ok(RouteConfirmed { acks })
    }

    async fn send_route(
        &self,
        target: &IngressTarget,
        namespace: &str,
        name: &str,
        command: &RouteCommand,
    ) -> Result<RouteAck, BusError> {
        let cluster = target.cluster.as_deref();
        let key = names::route_key(&target.ingress, namespace, name)?;
        if let Some(route) = &command.route {
            // Single writer: only the lease holder of this rollout writes its routes.
            match cluster {
                None => {
                    self.routes.put(&key, route).await?;
                }
                Some(cluster) => {
                    // Over the leaf link: bounded like the command, so a link that hangs
                    // halts the step instead of holding it.
                    let put = async { self.cluster_routes(cluster).await?.put(&key, route).await };
                    tokio::time::timeout(self.route_timeout, put)
                        .await
                        .map_err(|_| BusError::Timeout {
                            subject: format!("the routes bucket of {}", target.label()),
                        })??;
                }
            }
        }
        let subject = names::cluster_route_subject(cluster, &target.ingress)?;
        typed::request(&self.client, &subject, command, self.route_timeout).await
    }

    /// The routes bucket in member cluster `cluster`'s JetStream domain (opened once, over the
    /// leaf link; a failed open is tried again on the next route).
    async fn cluster_routes(&self, cluster: &str) -> Result<Bucket<DesiredRoute, Proto>, BusError> {
        let mut buckets = self.cluster_routes.lock().await;
        if let Some(bucket) = buckets.get(cluster) {
            return Ok(bucket.clone());
        }
        let js = jetstream::with_domain(self.client.clone(), names::parse_cluster(cluster)?);
        let bucket = Bucket::open(&js, names::BUCKET_ROUTES).await?;
        buckets.insert(cluster.to_owned(), bucket.clone());
        Ok(bucket)
    }

    /// The router-agent capabilities bucket in member cluster `cluster`'s JetStream domain,
    /// where that cluster's agents publish (read at `Apply`; not kept open).
    ///
    /// Errors: [`BusError`] for a cluster name that is not a subject token or a bucket that
    /// cannot be opened.
    pub async fn member_agents(
        &self,
        cluster: &str,
    ) -> Result<Bucket<AgentCapabilities, Proto>, BusError> {
        let js = jetstream::with_domain(self.client.clone(), names::parse_cluster(cluster)?);
        Bucket::open(&js, names::BUCKET_AGENTS).await
    }

    /// How long one route command, or one read over a leaf link, may take.
    pub fn route_timeout(&self) -> Duration {
        self.route_timeout
    }

    /// Asks the acting controller to carry out a workload operation (workload mode).
    ///
    /// Errors: [`BusError::NoResponders`] when no controller runs, [`BusError::Timeout`] when it
    /// did not answer in time.
    pub async fn workload(&self, command: &WorkloadCommand) -> Result<WorkloadAck, BusError> {
        let rollout = command.rollout.clone().unwrap_or_default();
        let subject = names::workload_subject(&rollout.namespace, &rollout.name)?;
        typed::request(&self.client, &subject, command, self.route_timeout).await
    }

    /// Asks the analyzer queue group for a verdict.
    ///
    /// Errors: [`BusError::NoResponders`] when no analyzer runs, [`BusError::Timeout`] when none
    /// answered in time, [`BusError::Remote`] when the analyzer refused the request.
    ///
    /// The wait is `--analysis-timeout`, or longer when the request calls webhooks: their
    /// longest call (each hook's own `timeout`, retries included) and a margin, so a long
    /// pre-rollout test is not cut short. Other rollouts do not wait meanwhile: each request
    /// is its own task.
    pub async fn analyze(&self, request: &AnalysisRequest) -> Result<Verdict, BusError> {
        self.analyze_in(None, request).await
    }

    /// [`Effects::analyze`], asked of member cluster `cluster`'s analyzers (`None`: the
    /// single-cluster queue group).
    ///
    /// Errors: as [`Effects::analyze`].
    pub async fn analyze_in(
        &self,
        cluster: Option<&str>,
        request: &AnalysisRequest,
    ) -> Result<Verdict, BusError> {
        let hooks = aviary_core::spec::longest_webhook_call(
            request
                .webhooks
                .iter()
                .map(|w| (w.attempt_timeout(), w.retries)),
        );
        let timeout = hooks.map_or(self.analysis_timeout, |longest| {
            self.analysis_timeout
                .max(longest + Duration::from_millis(aviary_core::machine::HOOK_ANSWER_MARGIN_MS))
        });
        let subject = names::analysis_subject(cluster)?;
        typed::request(&self.client, &subject, request, timeout).await
    }

    /// Appends an audit event to the events stream (de-duplicated by its id).
    ///
    /// Errors: as [`typed::publish_dedup_json`].
    pub async fn publish_event(&self, event: &AuditEvent) -> Result<(), BusError> {
        let subject = names::events_subject(&event.data.namespace, &event.data.name)?;
        typed::publish_dedup_json(&self.js, &subject, &event.id, event)
            .await
            .map(|_| ())
    }

    /// Nudges the owner of a rollout to re-read its record (after a control-API command).
    pub async fn wake(&self, namespace: &str, name: &str) {
        if let Ok(subject) = names::wake_subject(namespace, name) {
            let _ = self.client.publish(subject, bytes::Bytes::new()).await;
        }
    }
}
