//! What every Aviary service shares at run time: the common flags (admin port, logging,
//! OpenTelemetry export), the admin HTTP server (`/healthz`, `/readyz`, `/metrics`), the metrics
//! registry, the shutdown trigger, and the signature scheme of outgoing webhooks
//! ([`signature`]).
//!
//! A service's `main` does: parse flags → [`telemetry::init`] → [`shutdown::on_signals`] →
//! `service::run(config, shutdown)`. The service starts an [`admin::AdminServer`] with its own
//! registry and flips [`admin::Readiness`] once it has connected to its dependencies; its NATS
//! connection is an [`admin::Condition`] of that readiness, so `/readyz` drops while the
//! connection is down and comes back when it reconnects. Its tasks run under one
//! [`tasks::Tasks`]: a critical loop that dies fails readiness (condition `tasks`) and the run,
//! and the drain after shutdown has one deadline and names what it gave up on.

pub mod admin;
pub mod clock;
pub mod errors;
pub mod shutdown;
pub mod signature;
pub mod tasks;
pub mod telemetry;
pub mod tokens;

/// Selects rustls' `ring` provider for the whole process.
///
/// The dependency tree enables two rustls crypto back-ends (tonic uses `ring`, reqwest brings
/// `aws-lc-rs`), and rustls then refuses to guess; every process that serves or dials TLS calls
/// this first. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use std::net::SocketAddr;

/// Flags every service takes, flattened into its own clap struct.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "AVIARY_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Log filter in `tracing` syntax, e.g. `info,aviary_scheduler=debug`.
    #[arg(long, env = "AVIARY_LOG", default_value = "info")]
    pub log: String,

    /// Emit logs as JSON lines.
    #[arg(long, env = "AVIARY_LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`); off when unset.
    #[arg(long, env = "AVIARY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// How long a graceful drain may take after SIGTERM before the process exits anyway.
    /// (`10s`; a bare number is milliseconds.)
    #[arg(long = "drain-timeout", alias = "drain-timeout-ms", env = "AVIARY_DRAIN_TIMEOUT", default_value = "10s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub drain_timeout: std::time::Duration,
}
