//! The notifier's configuration file (YAML): providers, the default provider, per-rollout
//! routes, retry and de-duplication settings. Loading resolves secrets (webhook URLs, HMAC keys)
//! from the file, a file path or an environment variable, and checks everything up front so a
//! bad file fails at start, not at the first rollback.
//!
//! ```yaml
//! defaultProvider: slack          # gets every event at `defaultSeverity`
//! defaultSeverity: info
//! notifyStepAdvanced: false       # step advances are opt-in
//! providers:
//!   - name: slack
//!     type: slack                 # slack | teams | teams-legacy | discord | google-chat | webhook
//!     urlFile: /etc/aviary/slack-url   # or url: / urlEnv:
//!     channel: "#deploys"
//!     username: aviary
//!     iconEmoji: ":bird:"
//!     template: "{{rollout}} is {{phase}} on {{cluster}}"
//!     notifyFailedChecks: true    # also each failed check below the threshold (opt-in)
//!   - name: audit
//!     type: webhook
//!     urlEnv: AUDIT_URL
//!     secretEnv: AUDIT_HMAC_KEY   # HMAC-SHA256 signing key (secret / secretFile / secretEnv)
//!     keyId: audit-2026           # `kid` of its signatures (default: SHA-256 prefix of the key)
//! rollouts:
//!   test/podinfo:
//!     - { provider: audit, severity: error }
//! retry: { initialBackoff: 500ms, maxBackoff: 30s, maxAttempts: 8, maxElapsed: 5m }
//! eventWebhooks:                  # the rollouts' own `type: event` webhooks
//!   timeout: 10s                  # when a webhook gives none
//!   secretEnv: EVENT_HMAC_KEY     # signs them as the `webhook` providers are (optional)
//!   keyId: events-2026            # optional, as for providers
//! dedupTtl: 168h
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aviary_runtime::signature::SigningKey;
use serde::Deserialize;

use crate::notification::{Severity, Template};
use crate::retry::RetryPolicy;

/// What can be wrong with the configuration file. Never carries a secret's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why not (the I/O error kind).
        reason: String,
    },
    /// The YAML does not parse or has unknown fields.
    #[error("parsing the notifier config: {0}")]
    Parse(String),
    /// A field has a bad value; `field` is its path, e.g. `providers[1].url`.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub use aviary_bus::Secret;

/// The chat tool (or plain webhook) a provider posts to, and so the payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Slack incoming webhook: Block Kit `blocks` plus a `text` fallback.
    Slack,
    /// Microsoft Teams workflow webhook: an Adaptive Card in a `message` envelope.
    Teams,
    /// Microsoft Teams legacy Office 365 connector: a `MessageCard`.
    #[serde(alias = "msteams")]
    TeamsLegacy,
    /// Discord webhook: `content` and `embeds`.
    Discord,
    /// Google Chat space webhook: `text` and `cardsV2`.
    #[serde(alias = "gchat")]
    GoogleChat,
    /// Any HTTP endpoint: the CloudEvent itself, HMAC-SHA256 signed.
    Webhook,
}

impl ProviderKind {
    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Teams => "teams",
            Self::TeamsLegacy => "teams-legacy",
            Self::Discord => "discord",
            Self::GoogleChat => "google-chat",
            Self::Webhook => "webhook",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    name: String,
    #[serde(rename = "type")]
    kind: ProviderKind,
    url: Option<String>,
    url_file: Option<PathBuf>,
    url_env: Option<String>,
    channel: Option<String>,
    username: Option<String>,
    icon_emoji: Option<String>,
    icon_url: Option<String>,
    template: Option<String>,
    title_template: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    key_id: Option<String>,
    signature_header: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    notify_failed_checks: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRoute {
    provider: String,
    #[serde(default)]
    severity: Severity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRetry {
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    max_attempts: Option<u32>,
    max_elapsed: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    providers: Vec<RawProvider>,
    default_provider: Option<String>,
    #[serde(default)]
    default_severity: Severity,
    #[serde(default)]
    notify_step_advanced: bool,
    #[serde(default)]
    rollouts: BTreeMap<String, Vec<RawRoute>>,
    #[serde(default)]
    retry: RawRetry,
    dedup_ttl: Option<String>,
    queue_capacity: Option<usize>,
    #[serde(default)]
    event_webhooks: RawEventWebhooks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEventWebhooks {
    timeout: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    key_id: Option<String>,
    signature_header: Option<String>,
}

/// How the rollouts' own `event` webhooks (carried in each event's `eventWebhooks`) are called.
#[derive(Debug, Clone)]
pub struct EventWebhooks {
    /// Timeout of one call when the webhook gives none.
    pub timeout: Duration,
    /// How each post is signed, as for `webhook` providers; unsigned when `None`.
    pub signing: Option<Signing>,
}

impl Default for EventWebhooks {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            signing: None,
        }
    }
}

/// One configured provider, secrets resolved.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Unique name, referenced by routes and used as a metric label.
    pub name: String,
    /// Payload shape.
    pub kind: ProviderKind,
    /// Where to post; a secret (Slack and Discord URLs carry their token).
    pub url: Secret,
    /// Slack channel override.
    pub channel: Option<String>,
    /// Display name override (Slack, Discord).
    pub username: Option<String>,
    /// Slack `icon_emoji`.
    pub icon_emoji: Option<String>,
    /// Slack `icon_url`, Discord `avatar_url`.
    pub icon_url: Option<String>,
    /// Overrides the message body.
    pub template: Option<Template>,
    /// Overrides the message title.
    pub title_template: Option<Template>,
    /// How a generic webhook's posts are signed; unsigned when `None`.
    pub signing: Option<Signing>,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
    /// Also post each failed check (`check-failed`) below the threshold, not only the
    /// rollback that the threshold brings (as Flagger's per-provider opt-in).
    pub notify_failed_checks: bool,
}

/// How posts to one destination are signed ([`aviary_runtime::signature`]): each attempt
/// carries `header: t=<unix seconds>,kid=<key id>,v1=<HMAC-SHA256 of "<t>.<body>">`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// Header carrying the signature (default `X-Aviary-Signature`).
    pub header: String,
    /// The key and its id.
    pub key: SigningKey,
}

impl Signing {
    /// The header and its value for `body`, signed now.
    pub fn sign_now(&self, body: &[u8]) -> (&str, String) {
        (&self.header, self.key.sign_now(body))
    }
}

/// One rollout's route to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index into [`Settings::providers`].
    pub provider: usize,
    /// The least severe event this route gets (Flagger's alert severity).
    pub severity: Severity,
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every provider, in file order.
    pub providers: Vec<Provider>,
    /// The provider that gets every event (at [`Settings::default_severity`]).
    pub default_provider: Option<usize>,
    /// Severity filter of the default provider.
    pub default_severity: Severity,
    /// Post `step-advanced` events too.
    pub notify_step_advanced: bool,
    /// Routes per rollout, keyed `<namespace>/<name>`.
    pub rollouts: HashMap<String, Vec<Route>>,
    /// How posts are retried.
    pub retry: RetryPolicy,
    /// How long a delivered event id is remembered (must exceed how long an event can be
    /// redelivered, i.e. the events stream's max age).
    pub dedup_ttl: Duration,
    /// Bound of each provider's queue of pending posts.
    pub queue_capacity: usize,
    /// How the rollouts' `event` webhooks are called.
    pub event_webhooks: EventWebhooks,
}

/// Default timeout of one post: chat webhooks answer in well under a second; a hung
/// connection must not hold a provider's queue for long.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Header of the HMAC signature of signed posts.
const DEFAULT_SIGNATURE_HEADER: &str = aviary_runtime::signature::SIGNATURE_HEADER;

/// Default retention of delivered ids: a week, longer than any outage we expect to catch up
/// from, shorter than forever.
const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Default bound of a provider queue.
const DEFAULT_QUEUE_CAPACITY: usize = 256;

impl Settings {
    /// Reads and checks the file at `path`, resolving secrets from files and the environment.
    ///
    /// # Errors
    /// [`SettingsError::Read`] when the file cannot be read, [`SettingsError::Parse`] when it
    /// is not valid, [`SettingsError::Invalid`] naming the first bad field.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
            path: path.to_owned(),
            reason: e.kind().to_string(),
        })?;
        Self::from_yaml(&text, base_dir(path), &|name| std::env::var(name).ok())
    }

    /// Parses YAML text; relative `urlFile`/`secretFile` paths are taken from `dir`; `env`
    /// looks up environment variables.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_yaml(
        text: &str,
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let raw: RawSettings = if text.trim().is_empty() {
            RawSettings::default()
        } else {
            // serde_yaml errors quote the offending scalar at most; a secret in an unknown
            // field is possible, so only the location and the kind of problem are kept.
            serde_yaml::from_str(text).map_err(|e| SettingsError::Parse(describe_yaml_error(&e)))?
        };
        let mut providers = Vec::with_capacity(raw.providers.len());
        for (i, p) in raw.providers.into_iter().enumerate() {
            let field = |f: &str| format!("providers[{i}].{f}");
            if p.name.trim().is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if providers.iter().any(|q: &Provider| q.name == p.name) {
                return Err(invalid(
                    field("name"),
                    format!("duplicate provider {:?}", p.name),
                ));
            }
            let url = resolve_secret(
                &field("url"),
                p.url,
                p.url_file.as_deref(),
                p.url_env.as_deref(),
                dir,
                env,
            )?
            .ok_or_else(|| invalid(field("url"), "one of url, urlFile, urlEnv is required"))?;
            let parsed = reqwest::Url::parse(url.expose())
                .map_err(|_| invalid(field("url"), "not a valid URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(field("url"), "must be http or https"));
            }
            let secret = resolve_secret(
                &field("secret"),
                p.secret,
                p.secret_file.as_deref(),
                p.secret_env.as_deref(),
                dir,
                env,
            )?;
            if secret.is_some() && p.kind != ProviderKind::Webhook {
                return Err(invalid(
                    field("secret"),
                    "only webhook providers sign posts",
                ));
            }
            let template = p
                .template
                .map(|t| Template::parse(&t).map_err(|r| invalid(field("template"), r)))
                .transpose()?;
            let title_template = p
                .title_template
                .map(|t| Template::parse(&t).map_err(|r| invalid(field("titleTemplate"), r)))
                .transpose()?;
            let timeout = p
                .timeout
                .map(|t| parse_duration(&t).map_err(|r| invalid(field("timeout"), r)))
                .transpose()?
                .unwrap_or(DEFAULT_TIMEOUT);
            let signing = signing(&field(""), secret, p.key_id.as_deref(), p.signature_header)?;
            providers.push(Provider {
                name: p.name,
                kind: p.kind,
                url,
                channel: p.channel,
                username: p.username,
                icon_emoji: p.icon_emoji,
                icon_url: p.icon_url,
                template,
                title_template,
                signing,
                timeout,
                notify_failed_checks: p.notify_failed_checks,
            });
        }
        let index = |field: String, name: &str| {
            providers
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| invalid(field, format!("no provider named {name:?}")))
        };
        let default_provider = raw
            .default_provider
            .as_deref()
            .map(|name| index("defaultProvider".into(), name))
            .transpose()?;
        let mut rollouts = HashMap::new();
        for (key, routes) in raw.rollouts {
            match key.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
                _ => {
                    return Err(invalid(
                        format!("rollouts[{key:?}]"),
                        "key must be <namespace>/<name>",
                    ));
                }
            }
            let mut resolved = Vec::with_capacity(routes.len());
            for (i, route) in routes.into_iter().enumerate() {
                let provider = index(format!("rollouts[{key:?}][{i}].provider"), &route.provider)?;
                resolved.push(Route {
                    provider,
                    severity: route.severity,
                });
            }
            rollouts.insert(key, resolved);
        }
        let defaults = RetryPolicy::default();
        let duration = |field: &str, value: Option<String>, default: Duration| {
            value
                .map(|v| parse_duration(&v).map_err(|r| invalid(field, r)))
                .transpose()
                .map(|d| d.unwrap_or(default))
        };
        let retry = RetryPolicy {
            initial_backoff: duration(
                "retry.initialBackoff",
                raw.retry.initial_backoff,
                defaults.initial_backoff,
            )?,
            max_backoff: duration(
                "retry.maxBackoff",
                raw.retry.max_backoff,
                defaults.max_backoff,
            )?,
            max_attempts: raw.retry.max_attempts.unwrap_or(defaults.max_attempts),
            max_elapsed: duration(
                "retry.maxElapsed",
                raw.retry.max_elapsed,
                defaults.max_elapsed,
            )?,
        };
        if retry.max_attempts == 0 {
            return Err(invalid("retry.maxAttempts", "must be at least 1"));
        }
        if retry.initial_backoff.is_zero() || retry.max_backoff < retry.initial_backoff {
            return Err(invalid(
                "retry.maxBackoff",
                "backoffs must be positive and maxBackoff >= initialBackoff",
            ));
        }
        let dedup_ttl = duration("dedupTtl", raw.dedup_ttl, DEFAULT_DEDUP_TTL)?;
        if dedup_ttl.is_zero() {
            return Err(invalid("dedupTtl", "must be positive"));
        }
        let queue_capacity = raw.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(invalid("queueCapacity", "must be at least 1"));
        }
        let hooks = raw.event_webhooks;
        let event_webhooks = EventWebhooks {
            timeout: duration("eventWebhooks.timeout", hooks.timeout, DEFAULT_TIMEOUT)?,
            signing: signing(
                "eventWebhooks.",
                resolve_secret(
                    "eventWebhooks.secret",
                    hooks.secret,
                    hooks.secret_file.as_deref(),
                    hooks.secret_env.as_deref(),
                    dir,
                    env,
                )?,
                hooks.key_id.as_deref(),
                hooks.signature_header,
            )?,
        };
        if event_webhooks.timeout.is_zero() {
            return Err(invalid("eventWebhooks.timeout", "must be positive"));
        }
        Ok(Self {
            providers,
            default_provider,
            default_severity: raw.default_severity,
            notify_step_advanced: raw.notify_step_advanced,
            rollouts,
            retry,
            dedup_ttl,
            queue_capacity,
            event_webhooks,
        })
    }

    /// The providers an event of `severity` for rollout `<namespace>/<name>` goes to: the
    /// rollout's routes whose severity filter lets it through, plus the default provider;
    /// each provider at most once, in provider order.
    pub fn targets(&self, rollout: &str, severity: Severity) -> Vec<usize> {
        self.targets_with_alerts(rollout, severity, &[])
    }

    /// [`Settings::targets_with_alerts`] for an event of `kind`: a failed check goes only to the
    /// providers that ask for failed checks (`notifyFailedChecks`).
    pub fn targets_for(
        &self,
        kind: aviary_proto::events::EventKind,
        rollout: &str,
        severity: Severity,
        alerts: &[aviary_proto::events::AlertRoute],
    ) -> Vec<usize> {
        let mut targets = self.targets_with_alerts(rollout, severity, alerts);
        if kind == aviary_proto::events::EventKind::CheckFailed {
            targets.retain(|&i| {
                self.providers
                    .get(i)
                    .is_some_and(|p| p.notify_failed_checks)
            });
        }
        targets
    }

    /// [`Settings::targets`] plus the rollout's own `alerts` carried in the event: each names a
    /// provider configured here and a severity filter. An alert naming an unknown provider is
    /// skipped (and logged), never posted elsewhere.
    pub fn targets_with_alerts(
        &self,
        rollout: &str,
        severity: Severity,
        alerts: &[aviary_proto::events::AlertRoute],
    ) -> Vec<usize> {
        let from_alerts = alerts.iter().filter_map(|alert| {
            let Some(index) = self.providers.iter().position(|p| p.name == alert.provider) else {
                tracing::warn!(%rollout, alert = %alert.name, provider = %alert.provider, "alert names an unknown provider");
                return None;
            };
            let filter: Severity = serde_json::from_value(serde_json::Value::String(alert.severity.clone())).unwrap_or_default();
            filter.admits(severity).then_some(index)
        });
        let mut targets: Vec<usize> = self
            .rollouts
            .get(rollout)
            .into_iter()
            .flatten()
            .filter(|route| route.severity.admits(severity))
            .map(|route| route.provider)
            .chain(from_alerts)
            .collect();
        if let Some(default) = self.default_provider
            && self.default_severity.admits(severity)
        {
            targets.push(default);
        }
        targets.sort_unstable();
        targets.dedup();
        targets
    }
}

fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    // "unknown field `x`, expected one of ..." and "missing field `x`" name fields, not
    // values; "invalid type: string \"...\"" would quote a value, so cut at the first quote.
    let cut = text.find('"').map_or(text.as_str(), |i| &text[..i]);
    match e.location() {
        Some(loc) if !cut.contains(" at line ") => {
            format!(
                "{} at line {} column {}",
                cut.trim_end(),
                loc.line(),
                loc.column()
            )
        }
        _ => cut.trim_end().to_owned(),
    }
}

/// The signing of a destination whose fields start with `prefix` (`providers[0].`,
/// `eventWebhooks.`): a key id and a header name are checked even when there is no secret, so
/// a typo fails at start.
fn signing(
    prefix: &str,
    secret: Option<Secret>,
    key_id: Option<&str>,
    header: Option<String>,
) -> Result<Option<Signing>, SettingsError> {
    let header = header.unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.to_owned());
    if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Err(invalid(
            format!("{prefix}signatureHeader"),
            "not a valid header name",
        ));
    }
    let Some(secret) = secret else {
        if key_id.is_some() {
            return Err(invalid(
                format!("{prefix}keyId"),
                "needs a secret to sign with",
            ));
        }
        return Ok(None);
    };
    let key = SigningKey::new(secret.expose().as_bytes(), key_id)
        .map_err(|e| invalid(format!("{prefix}keyId"), e.to_string()))?;
    Ok(Some(Signing { header, key }))
}

fn resolve_secret(
    field: &str,
    inline: Option<String>,
    file: Option<&Path>,
    env_name: Option<&str>,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, SettingsError> {
    let given = [inline.is_some(), file.is_some(), env_name.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(invalid(
            field,
            "give only one of the value, a file or an env variable",
        ));
    }
    if let Some(value) = inline {
        return non_empty(field, value).map(Some);
    }
    if let Some(file) = file {
        let path = if file.is_absolute() {
            file.to_owned()
        } else {
            dir.join(file)
        };
        let value = std::fs::read_to_string(&path)
            .map_err(|e| invalid(field, format!("reading {}: {}", path.display(), e.kind())))?;
        return non_empty(field, value.trim().to_owned()).map(Some);
    }
    if let Some(name) = env_name {
        let value = env(name)
            .ok_or_else(|| invalid(field, format!("environment variable {name} is not set")))?;
        return non_empty(field, value.trim().to_owned()).map(Some);
    }
    Ok(None)
}

fn non_empty(field: &str, value: String) -> Result<Secret, SettingsError> {
    if value.trim().is_empty() {
        Err(invalid(field, "is empty"))
    } else {
        Ok(Secret::new(value))
    }
}

/// Parses `500ms`, `10s`, `1m`, `1h` (or a bare number of seconds).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 1m, 1h"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Settings, SettingsError> {
        Settings::from_yaml(yaml, Path::new("/nonexistent"), &|name| {
            (name == "HOOK").then(|| "https://hooks.example/T000/B000/secret-token".to_owned())
        })
    }

    const BASE: &str = r#"
defaultProvider: all
providers:
  - { name: all, type: slack, url: "https://hooks.example/all" }
  - { name: oncall, type: discord, urlEnv: HOOK }
  - { name: audit, type: webhook, url: "http://127.0.0.1:1/hook", secret: k }
rollouts:
  test/podinfo:
    - { provider: oncall, severity: error }
    - { provider: audit, severity: warn }
"#;

    #[test]
    fn routes_by_flagger_severity() {
        let s = load(BASE).expect("loads");
        assert_eq!(s.targets("test/podinfo", Severity::Info), vec![0]);
        assert_eq!(s.targets("test/podinfo", Severity::Warn), vec![0, 2]);
        assert_eq!(s.targets("test/podinfo", Severity::Error), vec![0, 1, 2]);
        assert_eq!(s.targets("other/app", Severity::Error), vec![0]);
    }

    #[test]
    fn rollout_alerts_route_by_their_own_severity() {
        let s = load(BASE).expect("loads");
        let alert = |severity: &str, provider: &str| aviary_proto::events::AlertRoute {
            name: "on-call".into(),
            severity: severity.into(),
            provider: provider.into(),
        };
        let alerts = [alert("error", "oncall"), alert("info", "nowhere")];
        assert_eq!(
            s.targets_with_alerts("other/app", Severity::Warn, &alerts),
            vec![0]
        );
        assert_eq!(
            s.targets_with_alerts("other/app", Severity::Error, &alerts),
            vec![0, 1]
        );
    }

    #[test]
    fn default_severity_filters_the_default_provider() {
        let s = load(&format!("{BASE}defaultSeverity: error\n")).expect("loads");
        assert!(s.targets("other/app", Severity::Warn).is_empty());
        assert_eq!(s.targets("other/app", Severity::Error), vec![0]);
    }

    #[test]
    fn secrets_come_from_env_and_never_show() {
        let s = load(BASE).expect("loads");
        assert_eq!(
            s.providers[1].url.expose(),
            "https://hooks.example/T000/B000/secret-token"
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[test]
    fn secrets_come_from_files_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("url"), "https://hooks.example/x\n").expect("write");
        let s = Settings::from_yaml(
            "providers: [{name: s, type: slack, urlFile: url}]",
            dir.path(),
            &|_| None,
        )
        .expect("loads");
        assert_eq!(s.providers[0].url.expose(), "https://hooks.example/x");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            ("providers: [{name: a, type: slack}]", "providers[0].url"),
            (
                "providers: [{name: a, type: slack, urlEnv: NOPE}]",
                "providers[0].url",
            ),
            (
                "providers: [{name: a, type: slack, url: 'https://x', urlEnv: HOOK}]",
                "providers[0].url",
            ),
            (
                "providers: [{name: a, type: slack, url: 'ftp://x'}]",
                "providers[0].url",
            ),
            ("defaultProvider: nope", "defaultProvider"),
            (
                "providers: [{name: a, type: slack, url: 'https://x', template: '{{nope}}'}]",
                "providers[0].template",
            ),
            ("rollouts: {podinfo: []}", "rollouts[\"podinfo\"]"),
            ("retry: {maxAttempts: 0}", "retry.maxAttempts"),
            (
                "providers: [{name: a, type: slack, url: 'https://x', secret: s}]",
                "providers[0].secret",
            ),
            (
                "providers: [{name: a, type: webhook, url: 'https://x', secret: s, keyId: 'a,b'}]",
                "providers[0].keyId",
            ),
            (
                "providers: [{name: a, type: webhook, url: 'https://x', keyId: k1}]",
                "providers[0].keyId",
            ),
            ("eventWebhooks: {keyId: k1}", "eventWebhooks.keyId"),
            (
                "eventWebhooks: {secret: s, signatureHeader: 'a b'}",
                "eventWebhooks.signatureHeader",
            ),
        ];
        for (yaml, field) in cases {
            match load(yaml) {
                Err(SettingsError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: expected an error on {field}, got {other:?}"),
            }
        }
        assert!(matches!(load("provider: []"), Err(SettingsError::Parse(_))));
        assert!(matches!(
            load("providers: [{name: a, type: carrier-pigeon, url: 'https://x'}]"),
            Err(SettingsError::Parse(_))
        ));
    }

    #[test]
    fn parse_errors_do_not_quote_values() {
        let err = load(
            "providers: [{name: a, type: slack, url: 'https://x', channel: [\"hunter2-secret\"]}]",
        )
        .expect_err("bad type");
        assert!(!err.to_string().contains("hunter2-secret"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("168h"), Ok(Duration::from_secs(168 * 3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
