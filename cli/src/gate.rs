//! `aviary gate`: drives an `aviary-gate` service (durable gates, state in NATS KV) for one
//! rollout, with the same webhook payload the scheduler's hooks send (`{name, namespace}`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::{GateAction, GateArgs};
use crate::online::parse_ref;

/// Runs `aviary gate ACTION NS/NAME`.
///
/// Errors when the service cannot be reached or answers other than 200/403.
pub(crate) async fn run(args: &GateArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let reference = parse_ref(args.target.namespace.as_deref(), &args.target.target)?;
    let path = match args.action {
        GateAction::Open => "/gate/open",
        GateAction::Close => "/gate/close",
        GateAction::Check => "/gate/check",
        GateAction::RollbackOpen => "/rollback/open",
        GateAction::RollbackClose => "/rollback/close",
        GateAction::RollbackCheck => "/rollback/check",
    };
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let payload = serde_json::json!({
        "name": reference.name,
        "namespace": reference.namespace,
        "phase": "",
        "metadata": {},
    });
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let mut request = reqwest::Client::new().post(&url).json(&payload);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gate service at {}", args.url))?;
    let status = response.status().as_u16();
    let target = format!("{}/{}", reference.namespace, reference.name);
    match (args.action, status) {
        (GateAction::Check | GateAction::RollbackCheck, 200) => {
            writeln!(out, "{target}: open")?;
            Ok(ExitCode::SUCCESS)
        }
        (GateAction::Check | GateAction::RollbackCheck, 403) => {
            writeln!(out, "{target}: closed")?;
            Ok(ExitCode::FAILURE)
        }
        (_, 200) => {
            writeln!(out, "{target}: {path} done")?;
            Ok(ExitCode::SUCCESS)
        }
        (_, code) => {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("gate service answered {code} for {path}: {}", body.trim())
        }
    }
}
