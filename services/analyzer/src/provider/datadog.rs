//! Datadog's metrics query API: `GET /api/v1/query?from=<s>&to=<s>&query=<q>` with the
//! `DD-API-KEY` and `DD-APPLICATION-KEY` headers, one request per sample.
//!
//! The window is `from`/`to` (whole seconds: the API takes nothing finer); the query must
//! aggregate to one series, whose last non-null point is the value (as Flagger reads it).
//! No series is no data; several series are an error, like a PromQL vector of many.

use std::time::Duration;

use serde::Deserialize;

use super::{BuildError, ProviderError, Secret, Window, http_client, join_url, send, snippet};
use crate::judge::Sample;

/// Datadog's US1 API; other sites (`https://api.datadoghq.eu`, …) are set with the URL flag.
pub const DEFAULT_URL: &str = "https://api.datadoghq.com";

/// How a Datadog client is set up.
#[derive(Debug, Clone)]
pub struct DatadogConfig {
    /// Base URL, e.g. [`DEFAULT_URL`].
    pub url: String,
    /// `DD-API-KEY`.
    pub api_key: Option<Secret>,
    /// `DD-APPLICATION-KEY`.
    pub application_key: Option<Secret>,
    /// Per-query deadline, connection included.
    pub timeout: Duration,
}

impl Default for DatadogConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            api_key: None,
            application_key: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A client for one Datadog site.
#[derive(Debug, Clone)]
pub struct Datadog {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    api_key: Option<Secret>,
    application_key: Option<Secret>,
    timeout: Duration,
}

impl Datadog {
    /// Builds a client.
    ///
    /// # Errors
    /// [`BuildError`] when the URL does not parse or the HTTP client cannot be built.
    pub fn new(config: &DatadogConfig) -> Result<Self, BuildError> {
        Ok(Self {
            http: http_client(config.timeout)?,
            endpoint: join_url("Datadog", &config.url, "/api/v1/query")?,
            api_key: config.api_key.clone(),
            application_key: config.application_key.clone(),
            timeout: config.timeout,
        })
    }

    /// The query endpoint, as a label.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Measures `query` over `window`.
    ///
    /// # Errors
    /// [`ProviderError::Timeout`] / [`ProviderError::Transport`] when Datadog cannot be reached
    /// in time; [`ProviderError::Http`] / [`ProviderError::Query`] when it rejects the request
    /// (bad keys: 403); [`ProviderError::Shape`] for several series.
    pub async fn query(&self, query: &str, window: Window) -> Result<Sample, ProviderError> {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("from", &window.start_ms.div_euclid(1000).to_string())
            .append_pair("to", &window.end_ms.div_euclid(1000).to_string())
            .append_pair("query", query);
        let mut request = self.http.get(url);
        if let Some(key) = &self.api_key {
            request = request.header("DD-API-KEY", key.expose());
        }
        if let Some(key) = &self.application_key {
            request = request.header("DD-APPLICATION-KEY", key.expose());
        }
        let secrets = self.api_key.iter().chain(&self.application_key);
        let (status, body) = send(request, self.timeout)
            .await
            .map_err(|e| e.redact(secrets.clone()))?;
        parse_response(status, &body).map_err(|e| e.redact(secrets))
    }
}

#[derive(Deserialize)]
struct QueryResponse {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// Authentication and permission failures: `{"errors": ["Forbidden"]}`.
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    series: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    pointlist: Vec<(serde_json::Value, serde_json::Value)>,
}

/// Decodes a query answer into one sample.
pub(crate) fn parse_response(status: u16, body: &[u8]) -> Result<Sample, ProviderError> {
    let ok = (200..300).contains(&status);
    let parsed: QueryResponse = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(e) if ok => return Err(ProviderError::Decode(e.to_string())),
        Err(_) => {
            return Err(ProviderError::Http {
                status,
                body: snippet(body),
            });
        }
    };
    if !parsed.errors.is_empty() || !ok {
        return Err(ProviderError::Http {
            status,
            body: if parsed.errors.is_empty() {
                parsed.error.unwrap_or_else(|| snippet(body))
            } else {
                parsed.errors.join("; ")
            },
        });
    }
    if let Some(s) = parsed.status.as_deref()
        && s != "ok"
    {
        return Err(ProviderError::Query {
            kind: s.to_owned(),
            message: parsed.error.unwrap_or_default(),
        });
    }
    match parsed.series.as_slice() {
        [] => Ok(Sample::NoData),
        [one] => Ok(super::last_number(one.pointlist.iter().map(|(_, v)| v))?
            .map_or(Sample::NoData, Sample::from_f64)),
        many => Err(ProviderError::Shape(format!(
            "{} series where one was expected (aggregate, e.g. sum:…{{…}}): {}",
            many.len(),
            many.iter()
                .take(3)
                .map(|s| s.scope.as_deref().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Sample, ProviderError> {
        parse_response(200, body.as_bytes())
    }

    #[test]
    fn the_last_non_null_point_is_the_value() {
        let body = r#"{"status":"ok","res_type":"time_series","series":[{"scope":"env:prod","pointlist":[[1700000000000,1.5],[1700000010000,2.5],[1700000020000,null]]}]}"#;
        assert_eq!(parse(body), Ok(Sample::Value(2.5)));
    }

    #[test]
    fn no_series_or_only_nulls_is_no_data() {
        assert_eq!(parse(r#"{"status":"ok","series":[]}"#), Ok(Sample::NoData));
        assert_eq!(
            parse(r#"{"status":"ok","series":[{"pointlist":[[1,null]]}]}"#),
            Ok(Sample::NoData)
        );
    }

    #[test]
    fn several_series_and_errors() {
        let many = r#"{"status":"ok","series":[{"scope":"host:a","pointlist":[[1,1]]},{"scope":"host:b","pointlist":[[1,2]]}]}"#;
        let Err(ProviderError::Shape(reason)) = parse(many) else {
            panic!("several series must be an error")
        };
        assert!(
            reason.contains("2 series") && reason.contains("host:b"),
            "{reason}"
        );
        assert_eq!(
            parse(r#"{"status":"error","error":"Rule 'x' does not exist"}"#),
            Err(ProviderError::Query {
                kind: "error".into(),
                message: "Rule 'x' does not exist".into()
            })
        );
        assert_eq!(
            parse_response(403, br#"{"errors":["Forbidden"]}"#),
            Err(ProviderError::Http {
                status: 403,
                body: "Forbidden".into()
            })
        );
        assert!(matches!(
            parse_response(502, b"<html>bad gateway</html>"),
            Err(ProviderError::Http { status: 502, .. })
        ));
    }
}
