//! A control plane for the CLI tests: a real nats-server, a scheduler in-process, and fake
//! router-agent and analyzer responders that answer like the real services (adapted from the
//! scheduler's own test fixture).

#![allow(dead_code)]

use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use aviary_testkit::{NatsServer, free_port};
use futures::StreamExt;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running control plane; stops the scheduler and the responders on drop.
pub(crate) struct ControlPlane {
    /// The NATS server (kept alive for the test's length).
    pub nats: NatsServer,
    /// `http://127.0.0.1:<port>` of the control API.
    pub server: String,
    shutdown: CancellationToken,
    scheduler: JoinHandle<anyhow::Result<()>>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.scheduler.abort();
    }
}

impl ControlPlane {
    /// Starts NATS, the responders for ingress `edge` (every analysis passes) and a scheduler
    /// with `extra` flags, and waits until the control API answers.
    pub(crate) async fn start(extra: &[&str]) -> Self {
        Self::start_judging(pb::Outcome::Pass, extra).await
    }

    /// [`ControlPlane::start`] for a control API over TLS (`extra` has the `--tls-*` flags):
    /// ready once its port accepts connections; `server` is `https://127.0.0.1:<port>`.
    pub(crate) async fn start_tls(extra: &[&str]) -> Self {
        Self::start_inner(pb::Outcome::Pass, extra, true).await
    }

    /// [`ControlPlane::start`] with an analyzer that answers `outcome` to every request.
    pub(crate) async fn start_judging(outcome: pb::Outcome, extra: &[&str]) -> Self {
        Self::start_inner(outcome, extra, false).await
    }

    async fn start_inner(outcome: pb::Outcome, extra: &[&str], tls: bool) -> Self {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let shutdown = CancellationToken::new();
        let client = nats.client().await.expect("nats client");
        route_responder(client.clone(), "edge", shutdown.clone()).await;
        analyzer_responder(client, outcome, shutdown.clone()).await;
        let port = free_port().expect("free port");
        let scheduler = tokio::spawn(aviary_scheduler::run(
            config(&nats.url(), port, extra),
            shutdown.clone(),
        ));
        let server = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        let url = server.clone();
        aviary_testkit::eventually(Duration::from_secs(10), "control API listening", || {
            let url = url.clone();
            async move {
                if tls {
                    return tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok()
                        .map(drop);
                }
                pb::rollout_service_client::RolloutServiceClient::connect(url)
                    .await
                    .ok()
                    .map(drop)
            }
        })
        .await;
        Self {
            nats,
            server,
            shutdown,
            scheduler,
        }
    }
}

/// Answers route commands for `ingress` with an ack of exactly the split asked for.
async fn route_responder(client: async_nats::Client, ingress: &str, stop: CancellationToken) {
    let mut sub = client
        .subscribe(names::route_subject(ingress).expect("ingress name"))
        .await
        .expect("subscribe to routes");
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                m = sub.next() => m,
            };
            let Some(message) = message else { return };
            let Ok(command) = pb::RouteCommand::decode(message.payload.clone()) else {
                continue;
            };
            let route = command.route.unwrap_or_default();
            let ack = pb::RouteAck {
                idempotency_key: command.idempotency_key,
                ingress: route.ingress,
                ok: true,
                primary_weight: route.primary_weight,
                canary_weight: route.canary_weight,
                mirror_percent: route.mirror_percent,
                error: String::new(),
                confirmed_at_ms: i64::try_from(aviary_scheduler::convert::now_ms())
                    .unwrap_or(i64::MAX),
            };
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, ack.encode_to_vec().into()).await;
            }
        }
    });
}

/// Answers analysis requests with `outcome` for every metric.
async fn analyzer_responder(
    client: async_nats::Client,
    outcome: pb::Outcome,
    stop: CancellationToken,
) {
    let mut sub = client
        .queue_subscribe(names::ANALYSIS_REQUEST, names::QUEUE_ANALYZER.into())
        .await
        .expect("subscribe to analysis requests");
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                m = sub.next() => m,
            };
            let Some(message) = message else { return };
            let Ok(request) = pb::AnalysisRequest::decode(message.payload.clone()) else {
                continue;
            };
            let metrics = request
                .metrics
                .iter()
                .map(|m| pb::MetricResult {
                    name: m.name.clone(),
                    value: Some(if outcome == pb::Outcome::Pass {
                        100.0
                    } else {
                        80.0
                    }),
                    min: m.min,
                    max: m.max,
                    outcome: outcome as i32,
                    ..Default::default()
                })
                .collect();
            let verdict = pb::Verdict {
                rollout: request.rollout,
                generation: request.generation,
                step: request.step,
                outcome: outcome as i32,
                metrics,
                ..Default::default()
            };
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, verdict.encode_to_vec().into()).await;
            }
        }
    });
}

/// Scheduler flags for a test replica.
fn config(nats_url: &str, grpc_port: u16, extra: &[&str]) -> aviary_scheduler::Config {
    use clap::Parser as _;
    let grpc = format!("127.0.0.1:{grpc_port}");
    let mut args = vec![
        "aviary-scheduler",
        "--nats-url",
        nats_url,
        "--admin-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        &grpc,
        "--replica-id",
        "cli-test",
        "--lease-ttl-ms",
        "1500",
        "--route-timeout-ms",
        "2000",
        "--analysis-timeout-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    aviary_scheduler::Config::parse_from(args)
}

/// Every audit event stored for `<namespace>/<name>`, in order, as JSON.
pub(crate) async fn stored_events(
    client: &async_nats::Client,
    namespace: &str,
    name: &str,
) -> Vec<serde_json::Value> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(names::STREAM_EVENTS)
        .await
        .expect("events stream");
    let subject = names::events_subject(namespace, name).expect("rollout name");
    let last = stream
        .clone()
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut events = Vec::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await
            && message.subject.as_str() == subject
        {
            events.push(serde_json::from_slice(&message.payload).expect("event is JSON"));
        }
    }
    events
}
