//! The "do" half of the scheduler: carries out what the state machine decided, each with a
//! timeout, and reports the outcome so it can be fed back as the machine's next input.
//!
//! - Routes: the desired split is written to the routes bucket (the state router agents
//!   reconcile to), then sent to every ingress's agent; the step counts as started only when
//!   every agent acknowledged the split it observed. A missing or failed ack is reported, never
//!   ignored.
//! - Analysis: one request to the analyzer queue group, answered with a verdict.
//! - Audit: events go to the events stream with their id as `Nats-Msg-Id`, so a re-publish after
//!   a takeover is dropped as a duplicate.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream;
use aviary_bus::kv::Bucket;
use aviary_bus::typed::{self, Proto};
use aviary_bus::{BusError, names};
use aviary_proto::events::AuditEvent;
use aviary_proto::{
    AnalysisRequest, DesiredRoute, RouteAck, RouteCommand, Verdict, WorkloadAck, WorkloadCommand,
};
use futures::future::join_all;

/// Every ingress acknowledged the split.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfirmed {
    /// The latest confirmation time among the ingresses: the step's analysis window starts here.
    pub confirmed_at_ms: i64,
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

    /// Records `command`'s route as the desired state of each ingress, sends it to each ingress's
    /// agent, and waits for all acks.
    ///
    /// Errors: [`RouteFailed`] naming each ingress that did not confirm and why (no agent, timeout,
    /// an apply error, or an observed split that differs from the one asked for).
    pub async fn apply_route(
        &self,
        ingresses: &[String],
        command: &RouteCommand,
    ) -> Result<RouteConfirmed, RouteFailed> {
        let Some(route) = command.route.as_ref() else {
            return Err(RouteFailed("route command without a route".into()));
        };
        let rollout = route.rollout.clone().unwrap_or_default();
        let rollout = &rollout;
        let sends = ingresses.iter().map(|ingress| async move {
            let mut command = command.clone();
            if let Some(route) = command.route.as_mut() {
                route.ingress = ingress.clone();
            }
            let result = self
                .send_route(ingress, &rollout.namespace, &rollout.name, &command)
                .await;
            (ingress.clone(), result)
        });
        let mut failures = Vec::new();
        let mut acks = Vec::new();
        for (ingress, result) in join_all(sends).await {
            match result {
                Ok(ack) if !ack.ok => failures.push(format!("{ingress}: {}", ack.error)),
                Ok(ack)
                    if ack.canary_weight != route.canary_weight
                        || ack.primary_weight != route.primary_weight =>
                {
                    failures.push(format!(
                        "{ingress}: observed {}/{} instead of {}/{}",
                        ack.primary_weight,
                        ack.canary_weight,
                        route.primary_weight,
                        route.canary_weight
                    ));
                }
                Ok(ack) => acks.push(ack),
                Err(error) => failures.push(format!("{ingress}: {error}")),
            }
        }
        if !failures.is_empty() {
            return Err(RouteFailed(failures.join("; ")));
        }
        let confirmed_at_ms = acks
            .iter()
            .map(|a| a.confirmed_at_ms)
            .max()
            .unwrap_or_default();
        Ok(RouteConfirmed {
            confirmed_at_ms,
            acks,
        })
    }

    async fn send_route(
        &self,
        ingress: &str,
        namespace: &str,
        name: &str,
        command: &RouteCommand,
    ) -> Result<RouteAck, BusError> {
        let key = names::route_key(ingress, namespace, name)?;
        if let Some(route) = &command.route {
            // Single writer: only the lease holder of this rollout writes its routes.
            self.routes.put(&key, route).await?;
        }
        let subject = names::route_subject(ingress)?;
        typed::request(&self.client, &subject, command, self.route_timeout).await
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
    /// The wait is `--analysis-timeout-ms`, or longer when the request calls webhooks: their
    /// longest call (each hook's own `timeout`, retries included) and a margin, so a long
    /// pre-rollout test is not cut short. Other rollouts do not wait meanwhile: each request
    /// is its own task.
    pub async fn analyze(&self, request: &AnalysisRequest) -> Result<Verdict, BusError> {
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
        typed::request(&self.client, names::ANALYSIS_REQUEST, request, timeout).await
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
