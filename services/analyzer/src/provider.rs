//! Metrics backends. Each turns one rendered query, evaluated at one instant, into a
//! [`Sample`] or a [`ProviderError`].
//!
//! - [`prometheus`]: the Prometheus HTTP API (`/api/v1/query`), also VictoriaMetrics and any
//!   other PromQL-compatible backend.
//! - [`datadog`]: Datadog's metrics query API (`/api/v1/query`).
//! - [`newrelic`]: New Relic NRQL through NerdGraph (`/graphql`).
//! - [`graphite`]: Graphite's render API (`/render?format=json`).
//!
//! [`Backend`] puts them behind one `query(query, window)`.
//!
//! Credentials come from files or the environment and live in [`Secret`], whose `Debug` and
//! `Display` print `***`, so they never reach a log line.

pub mod datadog;
pub mod graphite;
pub mod newrelic;
pub mod prometheus;

use std::time::Duration;

use crate::judge::Sample;

/// Why a backend gave no sample. Comparable, so tests assert on the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// No answer within the query timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Could not connect, or the connection broke.
    #[error("transport error: {0}")]
    Transport(String),
    /// The backend answered with an HTTP error and no API error body.
    #[error("HTTP {status}: {body}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The backend reported a query error (bad PromQL, timeout inside the backend…).
    #[error("query error ({kind}): {message}")]
    Query {
        /// The backend's error type, e.g. `bad_data`.
        kind: String,
        /// The backend's message.
        message: String,
    },
    /// The answer was not one number: many series, a string, a matrix.
    #[error("unusable result: {0}")]
    Shape(String),
    /// The answer could not be decoded.
    #[error("undecodable response: {0}")]
    Decode(String),
}

impl ProviderError {
    /// The error with every occurrence of a credential replaced by `***`: a backend or a proxy
    /// may echo a request header back in an error body, and reasons end up in verdicts and logs.
    pub(crate) fn redact<'a>(self, secrets: impl IntoIterator<Item = &'a Secret> + Clone) -> Self {
        let scrub = |text: String| {
            secrets
                .clone()
                .into_iter()
                .filter(|s| !s.expose().is_empty())
                .fold(text, |t, s| t.replace(s.expose(), "***"))
        };
        match self {
            Self::Timeout(d) => Self::Timeout(d),
            Self::Transport(m) => Self::Transport(scrub(m)),
            Self::Http { status, body } => Self::Http {
                status,
                body: scrub(body),
            },
            Self::Query { kind, message } => Self::Query {
                kind: scrub(kind),
                message: scrub(message),
            },
            Self::Shape(m) => Self::Shape(scrub(m)),
            Self::Decode(m) => Self::Decode(scrub(m)),
        }
    }
}

pub use aviary_bus::Secret;

/// How to authenticate to a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

/// The time a query covers, in milliseconds since the Unix epoch. PromQL backends evaluate at
/// `end_ms` (the range is inside the query); the others are asked for `start_ms..end_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Start, inclusive.
    pub start_ms: i64,
    /// End, the instant the analysis judges.
    pub end_ms: i64,
}

/// One metrics backend client, whichever vendor. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Prometheus or VictoriaMetrics.
    Prometheus(prometheus::Prometheus),
    /// Datadog.
    Datadog(datadog::Datadog),
    /// New Relic.
    NewRelic(newrelic::NewRelic),
    /// Graphite.
    Graphite(graphite::Graphite),
}

impl Backend {
    /// The backend's endpoint, as a label for de-duplication and concurrency limits.
    pub fn endpoint(&self) -> &str {
        match self {
            Self::Prometheus(b) => b.endpoint(),
            Self::Datadog(b) => b.endpoint(),
            Self::NewRelic(b) => b.endpoint(),
            Self::Graphite(b) => b.endpoint(),
        }
    }

    /// Measures `query` over `window`.
    ///
    /// # Errors
    /// As each client's `query`: timeouts, transport, HTTP and API errors, unusable shapes.
    pub async fn query(&self, query: &str, window: Window) -> Result<Sample, ProviderError> {
        match self {
            Self::Prometheus(b) => b.query(query, window.end_ms).await,
            Self::Datadog(b) => b.query(query, window).await,
            Self::NewRelic(b) => b.query(query, window).await,
            Self::Graphite(b) => b.query(query, window).await,
        }
    }

    /// Measures `query` at the window's end as an instant vector keyed by `label` (e.g. a
    /// histogram's buckets by `le`). PromQL backends only.
    ///
    /// # Errors
    /// As [`Self::query`]; [`ProviderError::Shape`] for a backend that does not speak PromQL.
    pub async fn query_by_label(
        &self,
        query: &str,
        window: Window,
        label: &str,
    ) -> Result<Vec<(String, f64)>, ProviderError> {
        match self {
            Self::Prometheus(b) => b.query_by_label(query, window.end_ms, label).await,
            Self::Datadog(_) | Self::NewRelic(_) | Self::Graphite(_) => Err(ProviderError::Shape(
                format!("series by `{label}` are read from PromQL backends only"),
            )),
        }
    }
}

/// How the clients of the non-PromQL vendors are set up. A vendor's credentials are sent only
/// to its configured URL: a metric naming another address gets a client without them.
#[derive(Debug, Clone, Default)]
pub struct VendorConfig {
    /// Datadog.
    pub datadog: datadog::DatadogConfig,
    /// New Relic.
    pub newrelic: newrelic::NewRelicConfig,
    /// Graphite.
    pub graphite: graphite::GraphiteConfig,
}

/// The provider a metric names (`provider_type`, case-insensitive; empty is Prometheus), as a
/// metrics label.
///
/// # Errors
/// For an unknown provider, and for what only a PromQL backend can answer: a built-in metric
/// (no `query`) or `minRequests` (counted with a PromQL query) on another vendor.
pub fn kind(check: &aviary_proto::MetricCheck) -> Result<&'static str, String> {
    let kind = match check.provider_type.to_ascii_lowercase().as_str() {
        "" | "prometheus" => "prometheus",
        "victoriametrics" => "victoriametrics",
        "datadog" => "datadog",
        "newrelic" => "newrelic",
        "graphite" => "graphite",
        other => return Err(format!("unsupported metrics provider `{other}`")),
    };
    if !speaks_promql(kind) {
        if check.query.is_empty() {
            return Err(format!(
                "metric `{}` on {kind} needs a query: built-in metrics are PromQL",
                check.name
            ));
        }
        if check.min_requests > 0 {
            return Err(format!(
                "metric `{}`: minRequests is counted with PromQL and is not available on {kind}",
                check.name
            ));
        }
    }
    Ok(kind)
}

/// Whether provider `kind` (as [`kind`] names it) answers PromQL.
pub fn speaks_promql(kind: &str) -> bool {
    matches!(kind, "prometheus" | "victoriametrics")
}

/// The Datadog, New Relic and Graphite clients, built on first use per address.
#[derive(Debug, Default)]
pub struct Vendors {
    config: VendorConfig,
    clients: std::sync::Mutex<std::collections::HashMap<(String, String), Backend>>,
}

impl Vendors {
    /// Clients set up from `config`.
    pub fn new(config: VendorConfig) -> Self {
        Self {
            config,
            clients: std::sync::Mutex::default(),
        }
    }

    /// The client for vendor `kind` at `address` (empty: the configured URL). Only the
    /// configured URL gets the configured credentials.
    ///
    /// # Errors
    /// [`BuildError`] for an unknown vendor, a bad address or a missing setting.
    pub fn client(&self, kind: &str, address: &str) -> Result<Backend, BuildError> {
        let key = (kind.to_owned(), address.to_owned());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let same = |configured: &str| {
            address.is_empty() || address.trim_end_matches('/') == configured.trim_end_matches('/')
        };
        let client = match kind {
            "datadog" => {
                let mut config = self.config.datadog.clone();
                if !same(&config.url) {
                    config = datadog::DatadogConfig {
                        url: address.to_owned(),
                        api_key: None,
                        application_key: None,
                        ..config
                    };
                }
                Backend::Datadog(datadog::Datadog::new(&config)?)
            }
            "newrelic" => {
                let mut config = self.config.newrelic.clone();
                if !same(&config.url) {
                    config = newrelic::NewRelicConfig {
                        url: address.to_owned(),
                        api_key: None,
                        ..config
                    };
                }
                Backend::NewRelic(newrelic::NewRelic::new(&config)?)
            }
            "graphite" => {
                let mut config = self.config.graphite.clone();
                if !same(&config.url) {
                    config = graphite::GraphiteConfig {
                        url: address.to_owned(),
                        auth: Auth::None,
                        ..config
                    };
                }
                Backend::Graphite(graphite::Graphite::new(&config)?)
            }
            other => {
                return Err(BuildError::Missing(format!(
                    "no vendor client for `{other}`"
                )));
            }
        };
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Why a vendor client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The URL does not parse.
    #[error("invalid {vendor} URL `{url}`: {reason}")]
    Url {
        /// Which vendor.
        vendor: &'static str,
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A required setting is missing.
    #[error("{0}")]
    Missing(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// `base` with `path` appended (a path prefix in `base` is kept).
pub(crate) fn join_url(
    vendor: &'static str,
    base: &str,
    path: &str,
) -> Result<reqwest::Url, BuildError> {
    let base = base.trim_end_matches('/');
    reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| BuildError::Url {
        vendor,
        url: base.to_owned(),
        reason: e.to_string(),
    })
}

/// An HTTP client with the query deadline, connection included.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| BuildError::Client(e.to_string()))
}

/// Sends `request` and reads the whole answer.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    Ok((status, body))
}

/// The start of a response body, for error reasons (vendors do not echo credentials back).
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// The last point of a series whose value is a number, as `(value, …)` pairs are read by
/// each vendor; `None` when every point is null.
pub(crate) fn last_number<'a>(
    values: impl DoubleEndedIterator<Item = &'a serde_json::Value>,
) -> Result<Option<f64>, ProviderError> {
    for value in values.rev() {
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Number(n) => {
                return n
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| ProviderError::Decode(format!("value `{n}` is not a number")));
            }
            other => {
                return Err(ProviderError::Decode(format!(
                    "value `{other}` is not a number"
                )));
            }
        }
    }
    Ok(None)
}

/// Maps a reqwest error to a provider error, telling timeouts apart.
pub(crate) fn transport_error(error: reqwest::Error, timeout: Duration) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout(timeout)
    } else {
        // Without the URL: it may carry credentials in userinfo.
        ProviderError::Transport(aviary_runtime::errors::error_chain(&error.without_url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        let auth = Auth::Basic {
            username: "u".into(),
            password: s,
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn secret_files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "abc");
    }
}
