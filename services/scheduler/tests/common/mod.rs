//! Shared fixtures for the scheduler tests: a real nats-server, in-process router-agent and
//! analyzer responders that answer like the real services, and a control-API client.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use aviary_proto::rollout_service_client::RolloutServiceClient;
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// What the fake data plane was asked to serve, in order: (primary backend, primary weight,
/// canary weight).
pub(crate) type Routes = Arc<Mutex<Vec<(String, u32, u32)>>>;

/// Answers route commands for `ingress` with an ack of exactly the split asked for.
pub(crate) async fn route_responder(client: async_nats::Client, ingress: &str) -> Routes {
    let routes: Routes = Arc::default();
    let mut sub = client
        .subscribe(names::route_subject(ingress).unwrap())
        .await
        .unwrap();
    let seen = routes.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(command) = pb::RouteCommand::decode(message.payload.clone()) else {
                continue;
            };
            let route = command.route.unwrap_or_default();
            let primary = route.primary.map(|b| b.name).unwrap_or_default();
            seen.lock()
                .unwrap()
                .push((primary, route.primary_weight, route.canary_weight));
            let ack = pb::RouteAck {
                idempotency_key: command.idempotency_key,
                ingress: route.ingress,
                ok: true,
                primary_weight: route.primary_weight,
                canary_weight: route.canary_weight,
                mirror_percent: route.mirror_percent,
                error: String::new(),
                confirmed_at_ms: i64::try_from(aviary_scheduler::convert::now_ms()).unwrap(),
            };
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, ack.encode_to_vec().into()).await;
            }
        }
    });
    routes
}

/// Answers analysis requests with `outcome` for every metric; counts the requests.
pub(crate) async fn analyzer_responder(
    client: async_nats::Client,
    outcome: pb::Outcome,
    stop: CancellationToken,
) -> Arc<Mutex<u32>> {
    let (_, held) = tokio::sync::watch::channel(true);
    held_analyzer_responder(client, outcome, held, stop).await
}

/// [`analyzer_responder`] that holds each answer until `release` is true.
pub(crate) async fn held_analyzer_responder(
    client: async_nats::Client,
    outcome: pb::Outcome,
    release: tokio::sync::watch::Receiver<bool>,
    stop: CancellationToken,
) -> Arc<Mutex<u32>> {
    let count = Arc::new(Mutex::new(0));
    let mut sub = client
        .queue_subscribe(names::ANALYSIS_REQUEST, names::QUEUE_ANALYZER.into())
        .await
        .unwrap();
    let seen = count.clone();
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
            *seen.lock().unwrap() += 1;
            let (client, mut release) = (client.clone(), release.clone());
            tokio::spawn(async move {
                // A dropped sender keeps the last value: `true` for the plain responder.
                let _ = release.wait_for(|r| *r).await;
                if let Some(reply) = message.reply {
                    let verdict = verdict(&request, outcome);
                    let _ = client.publish(reply, verdict.encode_to_vec().into()).await;
                }
            });
        }
    });
    count
}

/// `outcome` for every metric of `request`.
fn verdict(request: &pb::AnalysisRequest, outcome: pb::Outcome) -> pb::Verdict {
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
    pb::Verdict {
        rollout: request.rollout.clone(),
        generation: request.generation,
        step: request.step,
        outcome: outcome as i32,
        metrics,
        ..Default::default()
    }
}

/// A canary manifest with short intervals.
pub(crate) fn canary_manifest(
    name: &str,
    step_weight: u32,
    max_weight: u32,
    threshold: u32,
) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: test }}
spec:
  ingresses: [{{ name: edge }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  progressDeadlineSeconds: 60
  analysis:
    interval: 300ms
    threshold: {threshold}
    maxWeight: {max_weight}
    stepWeight: {step_weight}
    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
"#
    )
}

/// Scheduler flags for a test replica.
pub(crate) fn config(
    nats_url: &str,
    grpc_port: u16,
    replica: &str,
    extra: &[&str],
) -> aviary_scheduler::Config {
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
        replica,
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

/// A control-API client, retried until the server listens.
pub(crate) async fn api(grpc_port: u16) -> RolloutServiceClient<Channel> {
    let url = format!("http://127.0.0.1:{grpc_port}");
    aviary_testkit::eventually(Duration::from_secs(10), "control API listening", || {
        let url = url.clone();
        async move { RolloutServiceClient::connect(url).await.ok() }
    })
    .await
}

/// The phase of `test/<name>`.
pub(crate) async fn phase(api: &mut RolloutServiceClient<Channel>, name: &str) -> pb::Phase {
    let rollout = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", name)),
        })
        .await
        .unwrap()
        .into_inner();
    pb::Phase::try_from(rollout.status.unwrap_or_default().phase).unwrap_or(pb::Phase::Unspecified)
}

/// Waits until `test/<name>` reaches `want`.
pub(crate) async fn wait_phase(
    api: &RolloutServiceClient<Channel>,
    name: &str,
    want: pb::Phase,
    deadline: Duration,
) {
    aviary_testkit::eventually(deadline, &format!("{name} reaches {want:?}"), || {
        let mut api = api.clone();
        async move { (phase(&mut api, name).await == want).then_some(()) }
    })
    .await;
}

/// Every audit event stored for `test/<name>`, in order, as JSON.
pub(crate) async fn audit_events(
    client: &async_nats::Client,
    name: &str,
) -> Vec<serde_json::Value> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(names::STREAM_EVENTS).await.unwrap();
    let subject = names::events_subject("test", name).unwrap();
    let mut events = Vec::new();
    let mut seq = 1;
    let last = stream.clone().info().await.unwrap().state.last_sequence;
    while seq <= last {
        if let Ok(message) = stream.get_raw_message(seq).await
            && message.subject.as_str() == subject
        {
            events.push(serde_json::from_slice(&message.payload).unwrap());
        }
        seq += 1;
    }
    events
}

/// A scheduler replica (`a`) running in this test's process, its control API on `port`.
pub(crate) struct Replica {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// Starts it against `nats_url` with the test flags of [`config`] and `extra`.
    pub(crate) fn start(nats_url: &str, port: u16, extra: &[&str]) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(aviary_scheduler::run(
            config(nats_url, port, "a", extra),
            shutdown.clone(),
        ));
        Self { shutdown, task }
    }

    /// Shuts it down and checks that it exited cleanly.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A nats-server, a router-agent responder for ingress `edge` and a [`Replica`] with its
/// control API; the test adds the analyzer it needs.
pub(crate) struct Plane {
    /// The server (kept alive for the test's length).
    pub nats: aviary_testkit::NatsServer,
    /// A client of it.
    pub client: async_nats::Client,
    /// Every route the responder was asked for.
    pub routes: Routes,
    /// The replica's control API.
    pub api: RolloutServiceClient<Channel>,
    scheduler: Replica,
}

impl Plane {
    /// Starts all of it and waits for the control API.
    pub(crate) async fn start() -> Self {
        let nats = aviary_testkit::NatsServer::start().await.unwrap();
        let client = nats.client().await.unwrap();
        let routes = route_responder(client.clone(), "edge").await;
        let port = aviary_testkit::free_port().unwrap();
        let scheduler = Replica::start(&nats.url(), port, &[]);
        let api = api(port).await;
        Self {
            nats,
            client,
            routes,
            api,
            scheduler,
        }
    }

    /// Stops the replica and checks that it exited cleanly.
    pub(crate) async fn stop(self) {
        self.scheduler.stop().await;
    }
}

/// The median round trip of 200 raw NATS requests to an echo responder, in milliseconds: the
/// baseline benchmarks report beside their own figures.
pub(crate) async fn nats_rtt_p50_ms(client: &async_nats::Client) -> f64 {
    let mut echo = client.subscribe("bench.echo").await.unwrap();
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(msg) = echo.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let mut rtt = Vec::new();
    for _ in 0..200 {
        let started = std::time::Instant::now();
        client
            .request("bench.echo", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        rtt.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    task.abort();
    rtt.sort_by(f64::total_cmp);
    rtt[rtt.len() / 2]
}
