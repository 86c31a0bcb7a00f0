//! One ingress's control loop: route commands in, acks out, and a level-triggered reconcile.
//!
//! command → validate → apply (provider waits for the data plane's confirmation) → record the
//! route in the routes KV → reply `RouteAck` with the observed split. On start and every
//! reconcile interval, the desired route stored in KV is compared with what the data plane is
//! confirmed serving, and re-applied when they differ (a drift correction).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::Client;
use aviary_bus::kv::Bucket;
use aviary_bus::typed::{Proto, Received, Subscriber};
use aviary_bus::{BusError, BusMetrics, names};
use aviary_proto::{DesiredRoute, RouteAck, RouteCommand};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::model::Route;
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
    /// Serialises applies from commands and reconciles.
    lock: tokio::sync::Mutex<()>,
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
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The desired route of this ingress stored in KV: under `<ingress>.>`, the most recently
    /// written if several rollouts share the ingress (a single split is served per ingress).
    ///
    /// Errors: the bus's.
    pub async fn desired(&self) -> Result<Option<DesiredRoute>, BusError> {
        let prefix = format!("{}.", self.name);
        let keys = self.routes.keys().await?;
        let mut newest: Option<(u64, DesiredRoute)> = None;
        let mut found = 0;
        for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
            if let Some(entry) = self.routes.get(key).await? {
                found += 1;
                if newest.as_ref().is_none_or(|(rev, _)| entry.revision > *rev) {
                    newest = Some((entry.revision, entry.value));
                }
            }
        }
        if found > 1 {
            tracing::warn!(ingress = %self.name, routes = found,
                "several rollouts route this ingress; serving the most recently written");
        }
        Ok(newest.map(|(_, route)| route))
    }

    /// Applies `route`, timing it and counting the outcome.
    async fn apply(&self, route: &Route) -> Result<crate::model::Observed, ApplyError> {
        let started = Instant::now();
        let result = self.provider.apply(route).await;
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
        let _guard = self.lock.lock().await;
        match self.apply(&route).await {
            Ok(observed) => {
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

    /// Brings the data plane to the desired route in KV; whether a drift was corrected.
    ///
    /// Errors: reading KV, or the apply's, as text.
    pub async fn reconcile(&self) -> Result<bool, String> {
        let desired = self.desired().await.map_err(|e| e.to_string())?;
        let Some(desired) = desired else {
            return Ok(false);
        };
        let route = Route::try_from(&desired).map_err(|e| format!("stored route: {e}"))?;
        let _guard = self.lock.lock().await;
        if self.provider.in_sync(&route).await {
            return Ok(false);
        }
        self.apply(&route).await.map_err(|e| e.to_string())?;
        self.metrics.drift(&self.name);
        tracing::warn!(ingress = %self.name, canary = route.canary_weight,
            "data plane drifted from the desired route; corrected");
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
        let subject = names::route_subject(&self.name)?;
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
