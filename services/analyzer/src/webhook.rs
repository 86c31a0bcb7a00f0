//! Webhooks: Flagger's eight hook types, called with Flagger's payload
//! (`{name, namespace, phase, checksum, metadata}`), judged on the HTTP status.
//!
//! | type | 2xx | not 2xx |
//! |---|---|---|
//! | `confirm-rollout`, `confirm-traffic-increase`, `confirm-promotion` | pass (gate open) | inconclusive: the gate is closed, which halts but is not a failed check |
//! | `pre-rollout`, `rollout` | pass | fail (counts toward `threshold`) |
//! | `rollback` | fail, decisive: roll back now | pass (no rollback asked) |
//! | `post-rollout`, `event` | pass | error, reported but not folded (informational) |
//!
//! A hook that cannot be reached within its timeout after its retries is an error. Retries
//! (with exponential backoff) happen on transport errors, timeouts and 5xx; a 4xx is an answer.
//! With a secret set, each attempt is signed afresh in the scheme of
//! [`aviary_runtime::signature`]: `X-Aviary-Signature: t=<unix seconds>,kid=<key id>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">`. Redirects are never followed: a hook that redirects is
//! misconfigured, and following it would hand the signed request to another host.

use std::collections::BTreeMap;
use std::time::Duration;

use aviary_core::spec::WebhookType;
use aviary_proto::{Outcome, WebhookResult};
use aviary_runtime::signature::SigningKey;
use serde::Serialize;

/// The header carrying the body's signature.
pub use aviary_runtime::signature::SIGNATURE_HEADER;

/// A hook type as written on the wire: Flagger's spelling, and no type at all is Flagger's
/// default, `rollout`.
///
/// # Errors
/// An unknown spelling, in words for the hook's result.
pub fn hook_type(s: &str) -> Result<WebhookType, String> {
    if s.is_empty() {
        return Ok(WebhookType::Rollout);
    }
    WebhookType::parse(s).ok_or_else(|| format!("unknown webhook type `{s}`"))
}

/// What the analyzer does with a hook type: whether it is folded into the verdict, and how a
/// status code is judged.
pub trait HookRules {
    /// Whether the hook's result takes part in the folded verdict.
    fn folded(self) -> bool;
    /// The outcome of an answer with HTTP `status`, and why.
    fn judge(self, status: u16) -> (Outcome, String);
}

impl HookRules for WebhookType {
    fn folded(self) -> bool {
        !matches!(self, WebhookType::PostRollout | WebhookType::Event)
    }

    fn judge(self, status: u16) -> (Outcome, String) {
        let ok = (200..300).contains(&status);
        match (self, ok) {
            (WebhookType::Rollback, true) => {
                (Outcome::Fail, format!("HTTP {status}: rollback requested"))
            }
            (WebhookType::Rollback, false) => (
                Outcome::Pass,
                format!("HTTP {status}: no rollback requested"),
            ),
            (_, true) => (Outcome::Pass, format!("HTTP {status}")),
            (
                WebhookType::ConfirmRollout
                | WebhookType::ConfirmTrafficIncrease
                | WebhookType::ConfirmPromotion,
                false,
            ) => (Outcome::Inconclusive, format!("HTTP {status}: gate closed")),
            (WebhookType::PreRollout | WebhookType::Rollout, false) => {
                (Outcome::Fail, format!("HTTP {status}: check failed"))
            }
            (WebhookType::PostRollout | WebhookType::Event, false) => (
                Outcome::Error,
                format!("HTTP {status}: not delivered (informational)"),
            ),
        }
    }
}

/// Flagger's webhook payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Payload<'a> {
    /// Rollout name.
    pub name: &'a str,
    /// Rollout namespace.
    pub namespace: &'a str,
    /// Phase, e.g. `Progressing`.
    pub phase: &'a str,
    /// Checksum of the canary's revision.
    pub checksum: &'a str,
    /// The hook's metadata, verbatim.
    pub metadata: &'a BTreeMap<String, String>,
}

/// One hook to call.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Its name in the spec.
    pub name: String,
    /// The type as written (kept for the result even when unknown).
    pub kind: String,
    /// Where to POST.
    pub url: String,
    /// Per-attempt deadline.
    pub timeout: Duration,
    /// Extra attempts after the first on transport errors, timeouts and 5xx.
    pub retries: u32,
    /// Sent in the payload.
    pub metadata: BTreeMap<String, String>,
}

/// Calls webhooks.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    signing: Option<SigningKey>,
    backoff: Duration,
}

/// The first retry waits this long; each later one twice as long, up to [`MAX_BACKOFF`].
pub const DEFAULT_BACKOFF: Duration = aviary_core::spec::WEBHOOK_BACKOFF;
/// Backoff cap: a hook that is down for longer is reported, not waited on.
pub const MAX_BACKOFF: Duration = aviary_core::spec::MAX_WEBHOOK_BACKOFF;

impl WebhookClient {
    /// A client that signs requests with `signing` when a key is given. It follows no
    /// redirects (a 3xx is the hook's answer), so a signed request reaches only the hook's URL.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(signing: Option<SigningKey>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aviary-analyzer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            signing,
            backoff: DEFAULT_BACKOFF,
        })
    }

    /// Sets the first retry's backoff (tests use a short one).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Calls `hook` and judges the answer by its type. Never fails: every problem is in the
    /// result's outcome and reason.
    pub async fn call(&self, hook: &Hook, payload: &Payload<'_>) -> WebhookResult {
        let mut result = WebhookResult {
            name: hook.name.clone(),
            r#type: hook.kind.clone(),
            status_code: 0,
            outcome: Outcome::Error as i32,
            reason: String::new(),
        };
        let kind = match hook_type(&hook.kind) {
            Ok(kind) => kind,
            Err(e) => {
                result.reason = e;
                return result;
            }
        };
        let body = match serde_json::to_vec(payload) {
            Ok(body) => body,
            Err(e) => {
                result.reason = format!("encoding the payload: {e}");
                return result;
            }
        };
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .post(&hook.url)
                .timeout(hook.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            // Signed per attempt: a retry after a long backoff still falls in the receiver's
            // replay window.
            if let Some(key) = &self.signing {
                request = request.header(SIGNATURE_HEADER, key.sign_now(&body));
            }
            let retryable = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    result.status_code = u32::from(status);
                    let (outcome, reason) = kind.judge(status);
                    result.outcome = outcome as i32;
                    result.reason = reason;
                    response.status().is_server_error()
                }
                Err(e) => {
                    result.status_code = 0;
                    result.outcome = Outcome::Error as i32;
                    result.reason = if e.is_timeout() {
                        format!("no answer within {:?}", hook.timeout)
                    } else {
                        format!("unreachable: {}", e.without_url())
                    };
                    true
                }
            };
            if !retryable || attempt >= hook.retries {
                if attempt > 0 {
                    result.reason = format!("{} (after {} attempts)", result.reason, attempt + 1);
                }
                return result;
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flagger_type_parses_and_is_judged() {
        use Outcome::*;
        let cases = [
            ("confirm-rollout", Pass, Inconclusive),
            ("pre-rollout", Pass, Fail),
            ("rollout", Pass, Fail),
            ("confirm-traffic-increase", Pass, Inconclusive),
            ("confirm-promotion", Pass, Inconclusive),
            ("post-rollout", Pass, Error),
            ("rollback", Fail, Pass),
            ("event", Pass, Error),
        ];
        for (name, ok, not_ok) in cases {
            let kind = hook_type(name).unwrap();
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.judge(200).0, ok, "{name} 200");
            assert_eq!(kind.judge(403).0, not_ok, "{name} 403");
        }
        assert!(hook_type("nope").is_err());
        assert_eq!(hook_type(""), Ok(WebhookType::Rollout), "Flagger's default");
    }
}
