//! One ingress's control loop: route commands in, acks out, and a level-triggered reconcile.
//!
//! An ingress serves many rollouts at once: the agent keeps the [`RouteSet`] it serves, one
//! route per rollout, each taking the hosts and path prefix it selects. A command replaces its
//! rollout's route in that set and the whole set is applied; a command whose route would take a
//! host and path another rollout holds is refused, naming it.
//!
//! command → validate → conflict check → apply the set (provider waits for the data plane's
//! confirmation) → record the route in the routes KV → reply `RouteAck` with the split observed
//! for that rollout. On start and every reconcile interval, the routes stored in KV under the
//! ingress are compared with what the data plane is confirmed serving, and re-applied when they
//! differ (a drift correction).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use aviary_runtime::clock::now_ms_i64 as now_ms;

use async_nats::Client;
use aviary_bus::kv::Bucket;
use aviary_bus::typed::{Proto, Received, Subscriber};
use aviary_bus::{BusError, BusMetrics, names};
use aviary_proto::{DesiredRoute, RouteAck, RouteCommand};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::model::{Route, RouteSet};
use crate::provider::{ApplyError, Provider};

/// One ingress served by this agent.
pub struct Ingress {
    /// Ingress name.
    pub name: String,
    /// Its data plane.
    pub provider: Provider,
    /// Desired routes (written by the scheduler, and by us after an apply).
    pub routes: Bucket<DesiredRoute, Proto>,
    /// Metrics.
    pub metrics: Metrics,
    /// The member cluster this ingress belongs to (`--cluster`): its route commands come on
    /// the cluster-qualified subject; `None` for a single-cluster deployment.
    pub cluster: Option<String>,
    /// The routes the data plane serves (`None` until read from KV); held while applying, so
    /// applies from commands and reconciles are serialised.
    served: tokio::sync::Mutex<Option<RouteSet>>,
}

impl Ingress {
    /// An ingress over `provider`.
    pub fn new(
        name: String,
        provider: Provider,
        routes: Bucket<DesiredRoute, Proto>,
        metrics: Metrics,
    ) -> Self {
        Self {
            name,
            provider,
            routes,
            metrics,
            cluster: None,
            served: tokio::sync::Mutex::new(None),
        }
    }

    /// This ingress as one of member cluster `cluster` (`None`: single-cluster).
    #[must_use]
    pub fn in_cluster(mut self, cluster: Option<String>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The routes of this ingress stored in KV (under `<ingress>.>`), validated. An invalid
    /// one, or one this provider cannot serve (refused when it was commanded), is logged and
    /// left out; of two that take the same host and path (which Apply refuses, so only a race
    /// between two Applies writes them), the one in `preferred` (what is served) is kept, else
    /// the one stored longest unchanged (the lower KV revision: a refused route is sent, and so
    /// written, again and again).
    ///
    /// Errors: the bus's.
    pub async fn desired(&self, preferred: &RouteSet) -> Result<RouteSet, BusError> {
        let prefix = format!("{}.", self.name);
        let keys = self.routes.keys().await?;
        let mut stored = Vec::new();
        for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
            let Some(entry) = self.routes.get(key).await? else {
                continue;
            };
            match Route::try_from(&entry.value) {
                Ok(route) => match self.provider.can_serve(&route) {
                    Ok(()) => stored.push((entry.revision, route)),
                    Err(error) => {
                        tracing::debug!(ingress = %self.name, %key, %error,
                            "leaving out a stored route this data plane cannot serve");
                    }
                },
                Err(error) => {
                    tracing::warn!(ingress = %self.name, %key, %error, "ignoring an invalid stored route");
                }
            }
        }
        stored.sort_by_key(|(revision, r)| (!preferred.contains_key(&r.key()), *revision));
        let mut routes = RouteSet::new();
        for (_, route) in stored {
            if let Some((holder, conflict)) = route.conflict(&routes) {
                tracing::warn!(ingress = %self.name, rollout = %route.key(), holder = %holder.key(),
                    %conflict, "ignoring a stored route that takes what another rollout holds");
                continue;
            }
            routes.insert(route.key(), route);
        }
        Ok(routes)
    }

    /// Applies `routes` for `route` (one of them), timing it and counting the outcome.
    async fn apply(
        &self,
        routes: &RouteSet,
        route: &Route,
    ) -> Result<crate::model::Observed, ApplyError> {
        let started = Instant::now();
        let result = self.provider.apply_routes(routes, route).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ApplyError::Rejected { .. }) => "rejected",
            Err(ApplyError::Unsupported { .. }) => "unsupported",
            Err(ApplyError::Unconfirmed { .. }) => "unconfirmed",
            Err(ApplyError::Io { .. }) => "error",
        };
        self.metrics
            .record_apply(self.provider.kind(), outcome, started.elapsed());
        result
    }

    /// Handles one route command and returns the ack to send.
    pub async fn handle(&self, command: &RouteCommand) -> RouteAck {
        let mut ack = RouteAck {
            idempotency_key: command.idempotency_key.clone(),
            ingress: self.name.clone(),
            ..Default::default()
        };
        let Some(desired) = &command.route else {
            self.metrics.invalid(&self.name);
            ack.error = "invalid route: missing".into();
            return ack;
        };
        if desired.ingress != self.name {
            self.metrics.invalid(&self.name);
            ack.error = format!(
                "invalid route.ingress: {:?} sent to the agent of {:?}",
                desired.ingress, self.name
            );
            return ack;
        }
        let route = match Route::try_from(desired) {
            Ok(route) => route,
            Err(error) => {
                self.metrics.invalid(&self.name);
                tracing::warn!(ingress = %self.name, key = %command.idempotency_key, %error,
                    "invalid route command");
                ack.error = error.to_string();
                return ack;
            }
        };
        let mut served = self.served.lock().await;
        if served.is_none() {
            match self.desired(&RouteSet::new()).await {
                Ok(stored) => *served = Some(stored),
                Err(error) => {
                    ack.error = format!("reading the ingress's routes: {error}");
                    return ack;
                }
            }
        }
        let current = served.clone().unwrap_or_default();
        if let Some(refusal) = self.refusal(&current, &route) {
            self.metrics.invalid(&self.name);
            tracing::warn!(ingress = %self.name, key = %command.idempotency_key, %refusal,
                "route command refused");
            ack.error = refusal;
            return ack;
        }
        let mut next = current;
        next.insert(route.key(), route.clone());
        match self.apply(&next, &route).await {
            Ok(observed) => {
                *served = Some(next);
                ack.ok = true;
                ack.primary_weight = observed.primary_weight;
                ack.canary_weight = observed.canary_weight;
                ack.mirror_percent = observed.mirror_percent;
                ack.confirmed_at_ms = now_ms();
                tracing::info!(ingress = %self.name, key = %command.idempotency_key,
                    canary = observed.canary_weight, mirror = observed.mirror_percent, "route applied");
                if let Err(error) = self.record(desired).await {
                    tracing::warn!(ingress = %self.name, %error, "could not record the applied route");
                }
            }
            Err(error) => {
                tracing::warn!(ingress = %self.name, key = %command.idempotency_key, %error,
                    "route apply failed");
                ack.error = error.to_string();
            }
        }
        ack
    }

    /// Why `route` cannot join `served`: it takes a host and path another rollout holds, or the
    /// provider's one object already carries another rollout.
    fn refusal(&self, served: &RouteSet, route: &Route) -> Option<String> {
        if let Some((holder, conflict)) = route.conflict(served) {
            return Some(format!(
                "route.hosts: {conflict} on ingress {:?} is held by rollout {}",
                self.name,
                holder.key()
            ));
        }
        let key = route.key();
        if let Provider::Kube(_) = &self.provider
            && let Some(other) = served.keys().find(|k| **k != key)
        {
            return Some(format!(
                "route.rollout: ingress {:?} is one {} object, held by rollout {other}",
                self.name,
                self.provider.kind()
            ));
        }
        None
    }

    /// Writes the applied route to KV (by CAS; nothing when it is already there).
    async fn record(&self, desired: &DesiredRoute) -> Result<(), BusError> {
        let rollout = desired.rollout.clone().unwrap_or_default();
        let key = names::route_key(&self.name, &rollout.namespace, &rollout.name)?;
        self.routes
            .update_with(&key, |current| {
                (current.as_ref() != Some(desired)).then(|| desired.clone())
            })
            .await?;
        Ok(())
    }

    /// Brings the data plane to the routes in KV; whether a drift was corrected.
    ///
    /// Errors: reading KV, or the apply's, as text.
    pub async fn reconcile(&self) -> Result<bool, String> {
        let mut served = self.served.lock().await;
        let preferred = served.clone().unwrap_or_default();
        let desired = self.desired(&preferred).await.map_err(|e| e.to_string())?;
        let Some(any) = desired.values().next().cloned() else {
            // Nothing stored: the data plane keeps what it serves.
            return Ok(false);
        };
        if self.provider.in_sync_routes(&desired).await {
            *served = Some(desired);
            return Ok(false);
        }
        self.apply(&desired, &any)
            .await
            .map_err(|e| e.to_string())?;
        *served = Some(desired);
        self.metrics.drift(&self.name);
        tracing::warn!(ingress = %self.name, "data plane drifted from the desired routes; corrected");
        Ok(true)
    }

    /// Serves route commands and reconciles every `interval` until `shutdown` fires.
    ///
    /// Errors: the subscription cannot be made.
    pub async fn serve(
        self: Arc<Self>,
        client: Client,
        bus_metrics: Arc<BusMetrics>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let subject = names::cluster_route_subject(self.cluster.as_deref(), &self.name)?;
        let mut commands =
            Subscriber::<RouteCommand>::subscribe(&client, &subject, bus_metrics).await?;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                received = commands.next() => match received {
                    Some(received) => {
                        let span = received.span.clone();
                        self.respond(&client, received).instrument(span).await;
                    }
                    None => break,
                },
                _ = ticks.tick() => {
                    if let Err(error) = self.reconcile().await {
                        tracing::warn!(ingress = %self.name, %error, "reconcile failed");
                    }
                }
            }
        }
        tracing::info!(ingress = %self.name, "ingress loop stopped");
        Ok(())
    }

    async fn respond(&self, client: &Client, received: Received<RouteCommand>) {
        let ack = self.handle(&received.message).await;
        if let Err(error) = received.respond(client, &ack).await {
            tracing::warn!(ingress = %self.name, %error, "could not send the route ack");
        }
    }
}
