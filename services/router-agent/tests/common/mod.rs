//! Shared fixtures for the router-agent tests: tiny backend HTTP servers that answer with their
//! version and count requests, a bounded loopback traffic generator, and route builders.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aviary_proto::{
    Backend as PBackend, DesiredRoute, MatchCondition, MatchRule, RolloutRef, SessionAffinity,
    StringMatch, match_condition, string_match,
};
use aviary_router_agent::model::Route;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// A backend answering `GET /…` with its version, counting requests.
pub(crate) struct Backend {
    pub version: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl Backend {
    pub(crate) async fn start(version: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let body = version.to_owned();
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                body
            }
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        Self {
            version: version.to_owned(),
            addr,
            hits,
            shutdown,
        }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    pub(crate) fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Responses by body, and the `set-cookie` headers seen.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub by_body: HashMap<String, usize>,
    pub set_cookies: Vec<String>,
    pub errors: usize,
    pub statuses: Vec<u16>,
}

impl Tally {
    pub(crate) fn count(&self, body: &str) -> usize {
        self.by_body.get(body).copied().unwrap_or(0)
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends `n` GETs to `url` (8 in flight) with `headers`, and tallies the answers.
pub(crate) async fn traffic(url: &str, n: usize, headers: &[(&str, &str)]) -> Tally {
    let client = client();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let mut request = client.get(format!("{url}/r/{i}"));
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            async move {
                let response = request.send().await.ok()?;
                if !response.status().is_success() {
                    return Some(Err(response.status().as_u16()));
                }
                let cookies: Vec<String> = response
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_owned))
                    .collect();
                let body = response.text().await.ok()?;
                Some(Ok((body, cookies)))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut tally = Tally::default();
    for result in results {
        match result {
            Some(Ok((body, cookies))) => {
                *tally.by_body.entry(body).or_default() += 1;
                tally.set_cookies.extend(cookies);
            }
            Some(Err(status)) => {
                tally.errors += 1;
                tally.statuses.push(status);
            }
            None => tally.errors += 1,
        }
    }
    tally
}

/// A desired route between two backends.
pub(crate) fn desired(
    ingress: &str,
    primary: &Backend,
    canary: &Backend,
    canary_weight: u32,
) -> DesiredRoute {
    DesiredRoute {
        rollout: Some(RolloutRef::new("test", "podinfo")),
        ingress: ingress.into(),
        primary: Some(PBackend {
            name: primary.version.clone(),
            endpoints: vec![primary.endpoint()],
        }),
        canary: Some(PBackend {
            name: canary.version.clone(),
            endpoints: vec![canary.endpoint()],
        }),
        primary_weight: 100 - canary_weight,
        canary_weight,
        ..Default::default()
    }
}

pub(crate) fn route(d: &DesiredRoute) -> Route {
    Route::try_from(d).unwrap()
}

pub(crate) fn header(name: &str, kind: string_match::Kind) -> MatchRule {
    condition(match_condition::Kind::Header, name, kind)
}

pub(crate) fn cookie(name: &str, kind: string_match::Kind) -> MatchRule {
    condition(match_condition::Kind::Cookie, name, kind)
}

fn condition(kind: match_condition::Kind, name: &str, value: string_match::Kind) -> MatchRule {
    MatchRule {
        conditions: vec![MatchCondition {
            kind: kind as i32,
            name: name.into(),
            value: Some(StringMatch { kind: Some(value) }),
        }],
    }
}

pub(crate) fn affinity(value: &str, expired: bool) -> SessionAffinity {
    SessionAffinity {
        cookie_name: "aviary-cookie".into(),
        cookie_value: value.into(),
        max_age_seconds: 3600,
        expired,
        ..SessionAffinity::default()
    }
}

/// Asserts the canary's share of `n` is `percent` ± `tolerance` points.
pub(crate) fn assert_share(tally: &Tally, canary: &str, n: usize, percent: f64, tolerance: f64) {
    assert_eq!(tally.errors, 0, "{tally:?}");
    let share = tally.count(canary) as f64 * 100.0 / n as f64;
    assert!(
        (share - percent).abs() <= tolerance,
        "canary share {share:.1}% not within {percent}±{tolerance}: {tally:?}"
    );
}
