//! The control-API connection: endpoint, TLS, bearer token, and how a failed call is reported.

use std::time::Duration;

use anyhow::Context;
use aviary_proto::rollout_service_client::RolloutServiceClient;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::args::ApiArgs;

pub(crate) use aviary_proto::bearer::BearerToken;

/// A control-API client that sends the bearer token, if any, with every call.
pub(crate) type Client = RolloutServiceClient<InterceptedService<Channel, BearerToken>>;

/// The bearer token of `--token` or `--token-file`, if either is given.
///
/// # Errors
/// The token file cannot be read.
pub(crate) fn token_text(args: &ApiArgs) -> anyhow::Result<Option<String>> {
    Ok(match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read token file {}", path.display()))?,
        ),
        (None, None) => None,
    })
}

/// The endpoint of `--server`, with TLS when `--ca-file` or `--cert-file` is given or the URL
/// is `https://`; `--cert-file`/`--key-file` are the client certificate for mutual TLS.
///
/// # Errors
/// The URL is malformed, or the CA, certificate or key file cannot be read.
pub(crate) fn endpoint(args: &ApiArgs) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(args.server.clone())
        .with_context(|| format!("invalid server address {:?}", args.server))?
        .connect_timeout(args.connect_timeout)
        // Keeps a `watch` from hanging forever on a server that vanished without closing.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if args.ca_file.is_some() || args.cert_file.is_some() || args.server.starts_with("https://") {
        // Two rustls back-ends are linked (ring for tonic, aws-lc-rs for reqwest): pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls = ClientTlsConfig::new();
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA file {}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
            let cert = std::fs::read(cert)
                .with_context(|| format!("cannot read certificate file {}", cert.display()))?;
            let key = std::fs::read(key)
                .with_context(|| format!("cannot read key file {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).context("cannot configure TLS")?;
    }
    Ok(endpoint)
}

/// Connects to `--server` ([`endpoint`]) and sends `--token`, if any, with every call.
///
/// # Errors
/// The URL is malformed, the CA, certificate, key or token file cannot be read, or no server
/// answers within `--connect-timeout` (or completes the TLS handshake).
pub(crate) async fn connect(args: &ApiArgs) -> anyhow::Result<Client> {
    let endpoint = endpoint(args)?;
    let token = BearerToken::new(token_text(args)?.as_deref())?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    Ok(RolloutServiceClient::with_interceptor(channel, token))
}

/// The text `main` prints for a failed call: `<code>: <message>`, and for `InvalidArgument` one
/// field error per line (the server joins them with newlines).
pub(crate) fn describe_status(status: &Status) -> String {
    let code = format!("{:?}", status.code());
    let message = status.message().trim();
    if message.contains('\n') {
        let lines: Vec<&str> = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!("{code}:\n  {}", lines.join("\n  "))
    } else {
        format!("{code}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_code_and_splits_field_errors() {
        let status = Status::failed_precondition("pause is not allowed in phase Succeeded");
        assert_eq!(
            describe_status(&status),
            "FailedPrecondition: pause is not allowed in phase Succeeded"
        );
        let status = Status::invalid_argument("spec.a: bad\nspec.b: worse");
        assert_eq!(
            describe_status(&status),
            "InvalidArgument:\n  spec.a: bad\n  spec.b: worse"
        );
    }
}
