//! The Prometheus HTTP API: one instant query (`GET /api/v1/query?query=…&time=…`) per sample.
//!
//! The query is evaluated at the window's end (`time=`), with the window's length as the range
//! inside the query, so each analysis sees exactly its own step. Works unchanged against
//! VictoriaMetrics and other PromQL-compatible APIs.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Auth, ProviderError, transport_error};
use crate::judge::Sample;

/// How a Prometheus client is set up.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus:9090` (a path prefix is kept).
    pub url: String,
    /// Credentials.
    pub auth: Auth,
    /// Extra headers on every request (e.g. `X-Scope-OrgID` for multi-tenant backends).
    pub headers: Vec<(String, String)>,
    /// Per-query deadline, connection included.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Skip TLS certificate verification (test set-ups only).
    pub insecure_skip_verify: bool,
}

impl PrometheusConfig {
    /// A config for `url` with no auth and a 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: Auth::None,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            ca_file: None,
            insecure_skip_verify: false,
        }
    }
}

/// A client for one Prometheus-compatible backend.
#[derive(Debug, Clone)]
pub struct Prometheus {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    auth: Auth,
    timeout: Duration,
}

/// Why a Prometheus client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The URL does not parse.
    #[error("invalid Prometheus URL `{url}`: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A header name or value is invalid.
    #[error("invalid header `{0}`")]
    Header(String),
    /// The CA file cannot be read or parsed.
    #[error("CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the HTTP client: {0}")]
    Client(String),
}

impl Prometheus {
    /// Builds a client.
    ///
    /// # Errors
    /// [`BuildError`] naming the bad URL, header or CA file.
    pub fn new(config: &PrometheusConfig) -> Result<Self, BuildError> {
        let base = config.url.trim_end_matches('/');
        let endpoint =
            reqwest::Url::parse(&format!("{base}/api/v1/query")).map_err(|e| BuildError::Url {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| BuildError::Header(name.clone()))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| BuildError::Header(name.to_string()))?;
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tls_danger_accept_invalid_certs(config.insecure_skip_verify);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| BuildError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| BuildError::Ca {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| BuildError::Client(e.to_string()))?;
        Ok(Self {
            http,
            endpoint,
            auth: config.auth.clone(),
            timeout: config.timeout,
        })
    }

    /// The backend's base URL, as a label for metrics and de-duplication.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Evaluates `query` at `at_ms` (milliseconds since the Unix epoch).
    ///
    /// # Errors
    /// [`ProviderError::Timeout`] / [`ProviderError::Transport`] when the backend cannot be
    /// reached in time; [`ProviderError::Query`] / [`ProviderError::Http`] when it rejects the
    /// query; [`ProviderError::Shape`] when the result is not a single number.
    pub async fn query(&self, query: &str, at_ms: i64) -> Result<Sample, ProviderError> {
        let (status, body) = self.get(query, at_ms).await?;
        parse_response(status, &body)
    }

    /// Evaluates `query` at `at_ms` and reads an instant vector keyed by the value of `label`
    /// (e.g. `le` for `sum by (le) (…)`), one `(label value, value)` per series, in the
    /// backend's order. An empty vector is an empty list.
    ///
    /// # Errors
    /// As [`Self::query`]; [`ProviderError::Shape`] when the result is not an instant vector
    /// or a series lacks `label`.
    pub async fn query_by_label(
        &self,
        query: &str,
        at_ms: i64,
        label: &str,
    ) -> Result<Vec<(String, f64)>, ProviderError> {
        let (status, body) = self.get(query, at_ms).await?;
        parse_vector_response(status, &body, label)
    }

    async fn get(&self, query: &str, at_ms: i64) -> Result<(u16, bytes::Bytes), ProviderError> {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("query", query)
            .append_pair("time", &unix_seconds(at_ms));
        let mut request = self.http.get(url);
        request = match &self.auth {
            Auth::None => request,
            Auth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
        };
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, self.timeout))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, self.timeout))?;
        Ok((status.as_u16(), body))
    }
}

/// `1700000000.123`: the API takes seconds with a fraction.
fn unix_seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: serde_json::Map<String, serde_json::Value>,
    value: (serde_json::Value, String),
}

/// Decodes an API answer into the `data` of a successful one.
fn parse_data(status: u16, body: &[u8]) -> Result<ApiData, ProviderError> {
    let parsed: ApiResponse = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(e) if (200..300).contains(&status) => {
            return Err(ProviderError::Decode(e.to_string()));
        }
        Err(_) => {
            return Err(ProviderError::Http {
                status,
                body: snippet(body),
            });
        }
    };
    if parsed.status != "success" {
        return Err(ProviderError::Query {
            kind: parsed.error_type.unwrap_or_else(|| "unknown".into()),
            message: parsed.error.unwrap_or_default(),
        });
    }
    parsed
        .data
        .ok_or_else(|| ProviderError::Decode("success without data".into()))
}

/// Decodes an API answer into an instant vector keyed by `label`; NaN and infinite values are
/// left out (no data for that series).
pub(crate) fn parse_vector_response(
    status: u16,
    body: &[u8],
    label: &str,
) -> Result<Vec<(String, f64)>, ProviderError> {
    let data = parse_data(status, body)?;
    if data.result_type != "vector" {
        return Err(ProviderError::Shape(format!(
            "the query returned a {}, not an instant vector by `{label}`",
            data.result_type
        )));
    }
    let samples: Vec<VectorSample> =
        serde_json::from_value(data.result).map_err(|e| ProviderError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let key = match s.metric.get(label) {
            Some(serde_json::Value::String(v)) => v.clone(),
            _ => {
                return Err(ProviderError::Shape(format!(
                    "a series without label `{label}` (aggregate with `sum by ({label})`): {}",
                    serde_json::Value::Object(s.metric)
                )));
            }
        };
        if let Sample::Value(v) = parse_value(&s.value.1)? {
            out.push((key, v));
        }
    }
    Ok(out)
}

/// Decodes an API answer into one sample.
pub(crate) fn parse_response(status: u16, body: &[u8]) -> Result<Sample, ProviderError> {
    let data = parse_data(status, body)?;
    match data.result_type.as_str() {
        "vector" => {
            let samples: Vec<VectorSample> = serde_json::from_value(data.result)
                .map_err(|e| ProviderError::Decode(e.to_string()))?;
            match samples.as_slice() {
                [] => Ok(Sample::NoData),
                [one] => parse_value(&one.value.1),
                many => Err(ProviderError::Shape(format!(
                    "{} series where one was expected (aggregate with sum/avg): {}",
                    many.len(),
                    many.iter()
                        .take(3)
                        .map(|s| serde_json::Value::Object(s.metric.clone()).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
        "scalar" => {
            let (_, value): (serde_json::Value, String) = serde_json::from_value(data.result)
                .map_err(|e| ProviderError::Decode(e.to_string()))?;
            parse_value(&value)
        }
        "string" => Err(ProviderError::Shape(
            "the query returned a string, not a number".into(),
        )),
        "matrix" => Err(ProviderError::Shape(
            "the query returned a range vector (matrix); use an instant vector".into(),
        )),
        other => Err(ProviderError::Shape(format!(
            "unknown result type `{other}`"
        ))),
    }
}

fn parse_value(raw: &str) -> Result<Sample, ProviderError> {
    // Prometheus writes NaN, +Inf and -Inf as such; Rust's parser accepts all three.
    raw.parse::<f64>()
        .map(Sample::from_f64)
        .map_err(|_| ProviderError::Decode(format!("value `{raw}` is not a number")))
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Sample, ProviderError> {
        parse_response(200, body.as_bytes())
    }

    #[test]
    fn one_series_is_a_value() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.5,"99.5"]}]}}"#;
        assert_eq!(parse(body), Ok(Sample::Value(99.5)));
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"3"]}}"#;
        assert_eq!(parse(scalar), Ok(Sample::Value(3.0)));
    }

    #[test]
    fn empty_vector_and_nan_are_no_data() {
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse(empty), Ok(Sample::NoData));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(parse(nan), Ok(Sample::NoData));
        let inf = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#;
        assert_eq!(parse(inf), Ok(Sample::NoData));
    }

    #[test]
    fn unusable_shapes_are_errors_with_a_reason() {
        let many = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#;
        let Err(ProviderError::Shape(reason)) = parse(many) else {
            panic!("many series must be an error")
        };
        assert!(reason.contains("2 series"), "{reason}");
        let string = r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#;
        assert!(matches!(parse(string), Err(ProviderError::Shape(_))));
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(matches!(parse(matrix), Err(ProviderError::Shape(_))));
    }

    #[test]
    fn api_and_http_errors() {
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(
            parse_response(400, bad.as_bytes()),
            Err(ProviderError::Query {
                kind: "bad_data".into(),
                message: "parse error".into()
            })
        );
        assert_eq!(
            parse_response(502, b"Bad Gateway"),
            Err(ProviderError::Http {
                status: 502,
                body: "Bad Gateway".into()
            })
        );
        assert!(matches!(
            parse_response(200, b"<html>"),
            Err(ProviderError::Decode(_))
        ));
    }

    #[test]
    fn vectors_are_read_by_label() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"le":"10"},"value":[1,"4.5"]},{"metric":{"le":"+Inf"},"value":[1,"9"]},{"metric":{"le":"25"},"value":[1,"NaN"]}]}}"#;
        assert_eq!(
            parse_vector_response(200, body.as_bytes(), "le"),
            Ok(vec![("10".into(), 4.5), ("+Inf".into(), 9.0)])
        );
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(
            parse_vector_response(200, empty.as_bytes(), "le"),
            Ok(vec![])
        );
        let unlabelled = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#;
        assert!(matches!(
            parse_vector_response(200, unlabelled.as_bytes(), "le"),
            Err(ProviderError::Shape(_))
        ));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert!(matches!(
            parse_vector_response(200, scalar.as_bytes(), "le"),
            Err(ProviderError::Shape(_))
        ));
    }

    #[test]
    fn times_are_seconds_with_millis() {
        assert_eq!(unix_seconds(1_700_000_000_123), "1700000000.123");
        assert_eq!(unix_seconds(5), "0.005");
    }
}
