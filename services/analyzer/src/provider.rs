//! Metrics backends. Each turns one rendered query, evaluated at one instant, into a
//! [`Sample`] or a [`ProviderError`].
//!
//! - [`prometheus`]: the Prometheus HTTP API (`/api/v1/query`), also VictoriaMetrics and any
//!   other PromQL-compatible backend.
//!
//! Credentials come from files or the environment and live in [`Secret`], whose `Debug` and
//! `Display` print `***`, so they never reach a log line.

pub mod prometheus;

use std::fmt;
use std::path::Path;
use std::time::Duration;

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

/// A credential. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a credential from a file, trimming one trailing newline (as files written by
    /// `echo` and Kubernetes secrets mounted as files usually have).
    ///
    /// # Errors
    /// When the file cannot be read; the error names the file, not its content.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read_to_string(path)?;
        Ok(Self(
            raw.strip_suffix('\n')
                .map(|s| s.strip_suffix('\r').unwrap_or(s))
                .unwrap_or(&raw)
                .to_owned(),
        ))
    }

    /// The credential itself, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

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

/// Maps a reqwest error to a provider error, telling timeouts apart.
pub(crate) fn transport_error(error: reqwest::Error, timeout: Duration) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout(timeout)
    } else {
        // Without the URL: it may carry credentials in userinfo.
        ProviderError::Transport(error_chain(&error.without_url()))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
