//! New Relic NRQL through NerdGraph, New Relic's current query API:
//! `POST /graphql` with an `API-Key` header (a user key) and the GraphQL query
//! `actor { account(id) { nrql(query) { results } } }`.
//!
//! The account and the NRQL travel as GraphQL variables, so nothing in a query needs escaping.
//! The window: unless the query has its own `SINCE`, `SINCE <start> UNTIL <end>` (epoch
//! milliseconds) is appended, so the answer covers exactly the step's window. The value is the
//! one number of the single result row (`SELECT percentage(…)` → `{"percentage": 99.5}`; a
//! `percentile` row nests it one level). No row or a null is no data; several rows (FACET,
//! TIMESERIES) or several numbers are an error; a GraphQL `errors` array is an error.

use std::time::Duration;

use serde::Deserialize;

use super::{BuildError, ProviderError, Secret, Window, http_client, join_url, send, snippet};
use crate::judge::Sample;

/// NerdGraph's US endpoint host; the EU region is `https://api.eu.newrelic.com`.
pub const DEFAULT_URL: &str = "https://api.newrelic.com";

/// The GraphQL document sent with every query.
const NRQL_DOCUMENT: &str = "query($accountId: Int!, $nrql: Nrql!) { actor { account(id: $accountId) { nrql(query: $nrql) { results } } } }";

/// How a New Relic client is set up.
#[derive(Debug, Clone)]
pub struct NewRelicConfig {
    /// Base URL, e.g. [`DEFAULT_URL`].
    pub url: String,
    /// The account whose data is queried.
    pub account_id: Option<u64>,
    /// User API key (`API-Key`).
    pub api_key: Option<Secret>,
    /// Per-query deadline, connection included.
    pub timeout: Duration,
}

impl Default for NewRelicConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            account_id: None,
            api_key: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A client for NerdGraph.
#[derive(Debug, Clone)]
pub struct NewRelic {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    account_id: u64,
    api_key: Option<Secret>,
    timeout: Duration,
}

impl NewRelic {
    /// Builds a client.
    ///
    /// # Errors
    /// [`BuildError::Missing`] without an account id; [`BuildError::Url`] for a bad URL.
    pub fn new(config: &NewRelicConfig) -> Result<Self, BuildError> {
        let account_id = config.account_id.ok_or_else(|| {
            BuildError::Missing(
                "New Relic queries need an account id (--newrelic-account-id)".into(),
            )
        })?;
        Ok(Self {
            http: http_client(config.timeout)?,
            endpoint: join_url("New Relic", &config.url, "/graphql")?,
            account_id,
            api_key: config.api_key.clone(),
            timeout: config.timeout,
        })
    }

    /// The GraphQL endpoint, as a label.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Measures the NRQL `query` over `window`.
    ///
    /// # Errors
    /// [`ProviderError::Timeout`] / [`ProviderError::Transport`] when NerdGraph cannot be
    /// reached in time; [`ProviderError::Http`] for an HTTP error (bad key: 401);
    /// [`ProviderError::Query`] for GraphQL errors; [`ProviderError::Shape`] when the result is
    /// not one number.
    pub async fn query(&self, query: &str, window: Window) -> Result<Sample, ProviderError> {
        let body = request_body(self.account_id, query, window);
        let mut request = self.http.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.api_key {
            request = request.header("API-Key", key.expose());
        }
        let (status, body) = send(request, self.timeout)
            .await
            .map_err(|e| e.redact(&self.api_key))?;
        parse_response(status, &body).map_err(|e| e.redact(&self.api_key))
    }
}

/// The JSON body for `query` over `window`.
pub(crate) fn request_body(account_id: u64, query: &str, window: Window) -> serde_json::Value {
    serde_json::json!({
        "query": NRQL_DOCUMENT,
        "variables": { "accountId": account_id, "nrql": windowed(query, window) },
    })
}

/// `query` with the window appended, unless it sets its own with `SINCE`.
fn windowed(query: &str, window: Window) -> String {
    let has_since = query
        .split_whitespace()
        .any(|word| word.eq_ignore_ascii_case("since"));
    if has_since {
        query.to_owned()
    } else {
        format!(
            "{} SINCE {} UNTIL {}",
            query.trim_end(),
            window.start_ms,
            window.end_ms
        )
    }
}

#[derive(Deserialize)]
struct GraphqlResponse {
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    errors: Vec<GraphqlError>,
}

#[derive(Deserialize)]
struct GraphqlError {
    #[serde(default)]
    message: String,
}

/// Decodes a NerdGraph answer into one sample.
pub(crate) fn parse_response(status: u16, body: &[u8]) -> Result<Sample, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(ProviderError::Http {
            status,
            body: snippet(body),
        });
    }
    let parsed: GraphqlResponse =
        serde_json::from_slice(body).map_err(|e| ProviderError::Decode(e.to_string()))?;
    if !parsed.errors.is_empty() {
        return Err(ProviderError::Query {
            kind: "graphql".into(),
            message: parsed
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let results = parsed
        .data
        .as_ref()
        .and_then(|d| d.pointer("/actor/account/nrql/results"))
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| ProviderError::Decode("no data.actor.account.nrql.results".into()))?;
    match results.as_slice() {
        [] => Ok(Sample::NoData),
        [row] => row_value(row),
        many => Err(ProviderError::Shape(format!(
            "{} result rows where one was expected (drop FACET/TIMESERIES)",
            many.len()
        ))),
    }
}

/// The one number in a result row, looking one level into nested objects.
fn row_value(row: &serde_json::Value) -> Result<Sample, ProviderError> {
    let fields = row
        .as_object()
        .ok_or_else(|| ProviderError::Decode(format!("result row `{row}` is not an object")))?;
    let mut numbers = Vec::new();
    let mut nulls = 0;
    for (name, value) in fields {
        match value {
            serde_json::Value::Number(n) => numbers.push((name.clone(), n.as_f64())),
            serde_json::Value::Null => nulls += 1,
            serde_json::Value::Object(inner) => {
                for (key, v) in inner {
                    match v {
                        serde_json::Value::Number(n) => {
                            numbers.push((format!("{name}.{key}"), n.as_f64()));
                        }
                        serde_json::Value::Null => nulls += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match numbers.as_slice() {
        [] if nulls > 0 => Ok(Sample::NoData),
        [] => Err(ProviderError::Shape(format!(
            "the result row has no number: {row}"
        ))),
        [(_, value)] => value
            .map(Sample::from_f64)
            .ok_or_else(|| ProviderError::Decode(format!("`{row}` is not a number"))),
        many => Err(ProviderError::Shape(format!(
            "the result row has {} numbers where one was expected: {}",
            many.len(),
            many.iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(results: &str) -> String {
        format!(r#"{{"data":{{"actor":{{"account":{{"nrql":{{"results":{results}}}}}}}}}}}"#)
    }

    fn parse(body: &str) -> Result<Sample, ProviderError> {
        parse_response(200, body.as_bytes())
    }

    #[test]
    fn one_number_is_the_value() {
        assert_eq!(
            parse(&answer(r#"[{"percentage":99.5}]"#)),
            Ok(Sample::Value(99.5))
        );
        assert_eq!(
            parse(&answer(r#"[{"percentile.duration":{"99":0.25}}]"#)),
            Ok(Sample::Value(0.25))
        );
    }

    #[test]
    fn no_rows_or_null_is_no_data() {
        assert_eq!(parse(&answer("[]")), Ok(Sample::NoData));
        assert_eq!(parse(&answer(r#"[{"average":null}]"#)), Ok(Sample::NoData));
    }

    #[test]
    fn ambiguous_results_and_errors() {
        assert!(matches!(
            parse(&answer(r#"[{"count":1},{"count":2}]"#)),
            Err(ProviderError::Shape(_))
        ));
        assert!(matches!(
            parse(&answer(r#"[{"a":1,"b":2}]"#)),
            Err(ProviderError::Shape(_))
        ));
        assert_eq!(
            parse(r#"{"errors":[{"message":"NRQL Syntax Error"}],"data":null}"#),
            Err(ProviderError::Query {
                kind: "graphql".into(),
                message: "NRQL Syntax Error".into()
            })
        );
    }

    #[test]
    fn the_window_is_appended_unless_the_query_has_one() {
        let w = Window {
            start_ms: 1_000,
            end_ms: 31_000,
        };
        assert_eq!(
            windowed("SELECT count(*) FROM Transaction ", w),
            "SELECT count(*) FROM Transaction SINCE 1000 UNTIL 31000"
        );
        let own = "SELECT count(*) FROM Transaction since 5 minutes ago";
        assert_eq!(windowed(own, w), own);
    }
}
