//! The `--nats-*` flags every service flattens into its CLI, and the connection they describe.
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Config {
//!     #[command(flatten)]
//!     nats: aviary_bus::NatsArgs,
//! }
//! let client = config.nats.connect("aviary-scheduler").await?;
//! // or, reporting the connection's state (e.g. into readiness) as it changes:
//! let client = config.nats.connect_reporting("aviary-scheduler", |up| set_ready(up)).await?;
//! ```
//!
//! Authentication is one of: user + password, token, NKey seed file, or credentials file
//! (JWT + seed). TLS is enabled by a CA file and/or a client certificate + key. Secrets are
//! [`Secret`]s: never printed by `Debug`, never part of an error, and their environment values
//! are hidden from `--help`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};

use crate::BusError;

/// A credential (password, token, a webhook URL that carries a token, a signing key): the
/// project's one type for it, used by every service. `Display` prints `***`, `Debug`
/// `Secret(***)`, so no log line, error or status shows it; only [`Secret::expose`] gives the
/// value, for putting on the wire.
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
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let raw = std::fs::read_to_string(path)?;
        Ok(Self(
            raw.strip_suffix('\n')
                .map(|s| s.strip_suffix('\r').unwrap_or(s))
                .unwrap_or(&raw)
                .to_owned(),
        ))
    }

    /// The credential itself, for the client library, the HTTP client or the signer; never
    /// log it.
    pub fn expose(&self) -> &str {
        &self.0
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

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// NATS connection flags, shared by every service (`#[command(flatten)]`).
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL; several separated by commas.
    #[arg(
        long = "nats-url",
        env = "AVIARY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,

    /// User name (with --nats-password).
    #[arg(long = "nats-user", env = "AVIARY_NATS_USER", requires = "password")]
    pub user: Option<String>,

    /// Password (with --nats-user).
    #[arg(
        long = "nats-password",
        env = "AVIARY_NATS_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<Secret>,

    /// Authentication token.
    #[arg(
        long = "nats-token",
        env = "AVIARY_NATS_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["user", "nkey_seed_file", "credentials_file"]
    )]
    pub token: Option<Secret>,

    /// File holding an NKey seed (`SU…`).
    #[arg(
        long = "nats-nkey-seed-file",
        env = "AVIARY_NATS_NKEY_SEED_FILE",
        conflicts_with_all = ["user", "credentials_file"]
    )]
    pub nkey_seed_file: Option<PathBuf>,

    /// Credentials file (JWT and NKey seed, as `nsc` writes it).
    #[arg(
        long = "nats-creds-file",
        env = "AVIARY_NATS_CREDS_FILE",
        conflicts_with = "user"
    )]
    pub credentials_file: Option<PathBuf>,

    /// CA certificate (PEM) to verify the server with; enables TLS.
    #[arg(long = "nats-tls-ca-file", env = "AVIARY_NATS_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key-file).
    #[arg(
        long = "nats-tls-cert-file",
        env = "AVIARY_NATS_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// Client key (PEM) for mutual TLS (with --nats-tls-cert-file).
    #[arg(
        long = "nats-tls-key-file",
        env = "AVIARY_NATS_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Connection name shown by the server's monitoring (default: the service name).
    #[arg(long = "nats-name", env = "AVIARY_NATS_NAME")]
    pub name: Option<String>,

    /// Prefix of this connection's reply inboxes (default: `_INBOX_<service>`, the one its
    /// NATS user may subscribe to; see docs/bus.md).
    #[arg(long = "nats-inbox-prefix", env = "AVIARY_NATS_INBOX_PREFIX")]
    pub inbox_prefix: Option<String>,

    /// How long the first connection attempt may take.
    #[arg(long = "nats-connect-timeout", env = "AVIARY_NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl Default for NatsArgs {
    fn default() -> Self {
        Self::for_url("nats://127.0.0.1:4222")
    }
}

impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsArgs")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("name", &self.name)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl NatsArgs {
    /// Flags for an unauthenticated, plain connection to `url` (tests, local runs).
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            name: None,
            inbox_prefix: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Connects, naming the connection `--nats-name` or else `service`, with the reply inboxes
    /// under `--nats-inbox-prefix` or else [`crate::names::inbox_prefix`] of `service`.
    ///
    /// Once connected, the client reconnects forever (a NATS restart must not end a service).
    ///
    /// # Errors
    /// [`BusError::Config`] when the flags are inconsistent or a file cannot be read;
    /// [`BusError::Connect`] when no server accepts the connection in time. Neither carries a
    /// secret.
    pub async fn connect(&self, service: &str) -> Result<Client, BusError> {
        self.connect_reporting(service, |_| {}).await
    }

    /// As [`NatsArgs::connect`], and calls `on_connection(true)` each time the client
    /// connects (the first time included) and `on_connection(false)` each time it loses the
    /// connection or closes, in the order that happens. Services hand it their readiness, so
    /// `/readyz` follows the connection.
    ///
    /// # Errors
    /// As [`NatsArgs::connect`].
    pub async fn connect_reporting<F>(
        &self,
        service: &str,
        on_connection: F,
    ) -> Result<Client, BusError>
    where
        F: Fn(bool) + Send + Sync + 'static,
    {
        let addrs = self.server_addrs()?;
        let on_connection = Arc::new(on_connection);
        let options = self.options(service).await?.event_callback(move |event| {
            let on_connection = Arc::clone(&on_connection);
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!("NATS connected");
                        on_connection(true);
                    }
                    Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                        on_connection(false);
                    }
                    Event::Closed => {
                        tracing::warn!("NATS connection closed");
                        on_connection(false);
                    }
                    _ => {}
                }
            }
        });
        options.connect(addrs).await.map_err(|e| BusError::Connect {
            url: redact_url(&self.url),
            reason: e.to_string(),
        })
    }

    /// The connect options these flags describe.
    ///
    /// # Errors
    /// [`BusError::Config`] as for [`NatsArgs::connect`].
    pub async fn options(&self, service: &str) -> Result<ConnectOptions, BusError> {
        let methods = [
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
            self.nkey_seed_file.is_some(),
            self.credentials_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(BusError::Config(
                "use only one of user/password, token, NKey seed file, credentials file".into(),
            ));
        }
        let inbox_prefix = match &self.inbox_prefix {
            Some(prefix) => crate::names::token("--nats-inbox-prefix", prefix)?.to_owned(),
            None => crate::names::inbox_prefix(service),
        };
        let mut options = ConnectOptions::new()
            .name(self.name.as_deref().unwrap_or(service))
            .custom_inbox_prefix(inbox_prefix)
            .connection_timeout(self.connect_timeout)
            .max_reconnects(None);
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user.clone(), password.expose().to_owned());
            }
            (None, None) => {}
            _ => {
                return Err(BusError::Config(
                    "--nats-user and --nats-password go together".into(),
                ));
            }
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = tokio::fs::read_to_string(path).await.map_err(|e| {
                BusError::Config(format!(
                    "reading NKey seed file {}: {}",
                    path.display(),
                    e.kind()
                ))
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.credentials_file {
            // The error text of a failed parse could quote the file; keep only its kind.
            options = options.credentials_file(path).await.map_err(|e| {
                BusError::Config(format!(
                    "reading credentials file {}: {}",
                    path.display(),
                    e.kind()
                ))
            })?;
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => {
                return Err(BusError::Config(
                    "--nats-tls-cert-file and --nats-tls-key-file go together".into(),
                ));
            }
        }
        Ok(options)
    }

    fn server_addrs(&self) -> Result<Vec<ServerAddr>, BusError> {
        let addrs = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| BusError::Config(format!("bad NATS URL {}: {e}", redact_url(s))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(BusError::Config("--nats-url is empty".into()));
        }
        Ok(addrs)
    }
}

/// `url` with any `user:password@` replaced by `***@`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &one[..scheme + 3], &one[at..])
            }
            (None, Some(at)) => format!("***{}", &one[at..]),
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `500ms`, `10s`, `1m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cli = Cli::try_parse_from([
            "svc",
            "--nats-url",
            "nats://alice:hunter2@127.0.0.1:4222",
            "--nats-user",
            "alice",
            "--nats-password",
            "s3cret-pw",
        ])
        .expect("parses");
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert_eq!(
            cli.nats.password.as_ref().map(Secret::expose),
            Some("s3cret-pw")
        );
    }

    #[test]
    fn one_authentication_method_only() {
        let both = Cli::try_parse_from(["svc", "--nats-token", "t", "--nats-creds-file", "/x"]);
        assert!(both.is_err());
        let half = Cli::try_parse_from(["svc", "--nats-user", "alice"]);
        assert!(half.is_err());
    }

    #[test]
    fn redacts_every_url() {
        assert_eq!(
            redact_url("nats://a:b@h1:4222,nats://h2:4222,tls://tok@h3"),
            "nats://***@h1:4222,nats://h2:4222,tls://***@h3"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[tokio::test]
    async fn reports_losing_and_regaining_the_connection() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let deadline = Duration::from_secs(30);
        let mut nats = aviary_testkit::NatsServer::start()
            .await
            .expect("nats-server");
        let up = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&up);
        let _client = NatsArgs::for_url(nats.url())
            .connect_reporting("svc", move |connected| {
                seen.store(connected, Ordering::SeqCst)
            })
            .await
            .expect("connects");
        let state = |want: bool| {
            let up = Arc::clone(&up);
            move || {
                let up = Arc::clone(&up);
                async move { (up.load(Ordering::SeqCst) == want).then_some(()) }
            }
        };
        aviary_testkit::eventually(deadline, "reported connected", state(true)).await;
        nats.stop().await.expect("stops");
        aviary_testkit::eventually(deadline, "reported disconnected", state(false)).await;
        nats.start_again().await.expect("starts on the same port");
        aviary_testkit::eventually(deadline, "reported reconnected", state(true)).await;
    }

    #[tokio::test]
    async fn bad_config_errors_name_no_secret() {
        let mut args = NatsArgs::for_url("nats://127.0.0.1:1");
        args.token = Some(Secret::new("tok-123"));
        args.user = Some("u".into());
        args.password = Some(Secret::new("pw-456"));
        let err = args.connect("svc").await.expect_err("two auth methods");
        assert_eq!(err.kind(), crate::BusErrorKind::Config);
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("pw-456"),
            "{shown}"
        );
    }
}
