//! Graphite's render API: `GET /render?target=<q>&from=<s>&until=<s>&format=json`.
//!
//! The window is absolute (`from`/`until` in epoch seconds), so it is the step's own window and
//! not "the last N minutes" at whatever time the query runs. The answer is a list of series
//! `[{"target": …, "datapoints": [[value, ts], …]}]`; the value is the last non-null point of
//! the one series. No series or only nulls is no data; several series are an error.

use std::time::Duration;

use serde::Deserialize;

use super::{Auth, BuildError, ProviderError, Window, http_client, join_url, send, snippet};
use crate::judge::Sample;

/// How a Graphite client is set up.
#[derive(Debug, Clone)]
pub struct GraphiteConfig {
    /// Base URL of graphite-web (there is no public default); empty when not configured.
    pub url: String,
    /// Credentials, for a graphite-web behind basic or bearer auth.
    pub auth: Auth,
    /// Per-query deadline, connection included.
    pub timeout: Duration,
}

impl Default for GraphiteConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            auth: Auth::None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A client for one graphite-web.
#[derive(Debug, Clone)]
pub struct Graphite {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    auth: Auth,
    timeout: Duration,
}

impl Graphite {
    /// Builds a client.
    ///
    /// # Errors
    /// [`BuildError::Missing`] without a URL; [`BuildError::Url`] for a bad one.
    pub fn new(config: &GraphiteConfig) -> Result<Self, BuildError> {
        if config.url.is_empty() {
            return Err(BuildError::Missing(
                "Graphite queries need an address (the metric's provider address or --graphite-url)"
                    .into(),
            ));
        }
        Ok(Self {
            http: http_client(config.timeout)?,
            endpoint: join_url("Graphite", &config.url, "/render")?,
            auth: config.auth.clone(),
            timeout: config.timeout,
        })
    }

    /// The render endpoint, as a label.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Measures the target `query` over `window`.
    ///
    /// # Errors
    /// [`ProviderError::Timeout`] / [`ProviderError::Transport`] when Graphite cannot be
    /// reached in time; [`ProviderError::Http`] when it rejects the request;
    /// [`ProviderError::Shape`] for several series.
    pub async fn query(&self, query: &str, window: Window) -> Result<Sample, ProviderError> {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("target", query)
            .append_pair("from", &window.start_ms.div_euclid(1000).to_string())
            .append_pair("until", &window.end_ms.div_euclid(1000).to_string())
            .append_pair("format", "json");
        let request = match &self.auth {
            Auth::None => self.http.get(url),
            Auth::Basic { username, password } => self
                .http
                .get(url)
                .basic_auth(username, Some(password.expose())),
            Auth::Bearer(token) => self.http.get(url).bearer_auth(token.expose()),
        };
        let secret = match &self.auth {
            Auth::None => None,
            Auth::Basic { password, .. } => Some(password),
            Auth::Bearer(token) => Some(token),
        };
        let (status, body) = send(request, self.timeout)
            .await
            .map_err(|e| e.redact(secret))?;
        parse_response(status, &body).map_err(|e| e.redact(secret))
    }
}

#[derive(Deserialize)]
struct Series {
    target: String,
    datapoints: Vec<(serde_json::Value, serde_json::Value)>,
}

/// Decodes a render answer into one sample.
pub(crate) fn parse_response(status: u16, body: &[u8]) -> Result<Sample, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(ProviderError::Http {
            status,
            body: snippet(body),
        });
    }
    let series: Vec<Series> =
        serde_json::from_slice(body).map_err(|e| ProviderError::Decode(e.to_string()))?;
    match series.as_slice() {
        [] => Ok(Sample::NoData),
        [one] => Ok(super::last_number(one.datapoints.iter().map(|(v, _)| v))?
            .map_or(Sample::NoData, Sample::from_f64)),
        many => Err(ProviderError::Shape(format!(
            "{} series where one was expected (wrap the target in sumSeries/averageSeries): {}",
            many.len(),
            many.iter()
                .take(3)
                .map(|s| s.target.as_str())
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
        let body = r#"[{"target":"app.ok","datapoints":[[1.0,1700000000],[2.0,1700000010],[null,1700000020]]}]"#;
        assert_eq!(parse(body), Ok(Sample::Value(2.0)));
    }

    #[test]
    fn nothing_or_nulls_is_no_data_and_many_is_an_error() {
        assert_eq!(parse("[]"), Ok(Sample::NoData));
        assert_eq!(
            parse(r#"[{"target":"x","datapoints":[[null,1]]}]"#),
            Ok(Sample::NoData)
        );
        let many = r#"[{"target":"a","datapoints":[[1,1]]},{"target":"b","datapoints":[[1,1]]}]"#;
        let Err(ProviderError::Shape(reason)) = parse(many) else {
            panic!("several series must be an error")
        };
        assert!(reason.contains("2 series"), "{reason}");
        assert!(matches!(
            parse_response(500, b"oops"),
            Err(ProviderError::Http { status: 500, .. })
        ));
    }
}
