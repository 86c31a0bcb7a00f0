//! Commands that talk to the control API (`apply`, `get`, `list`, `describe`, `watch` and the
//! rollout commands) or read the audit stream from NATS (`events`).
//!
//! Each returns the process exit code. A failed gRPC call comes back as an error wrapping the
//! [`tonic::Status`], which `main` prints as `error: <code>: <message>`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use aviary_bus::names;
use aviary_proto as pb;
use aviary_proto::events::{AuditEvent, EventKind};
use futures::StreamExt;
use tokio::time::Instant;

use crate::args::{
    ApplyArgs, CommandArgs, DeleteArgs, EventsArgs, Format, GetArgs, ListArgs, PromoteArgs, RefArg,
    SetWeightArgs, WatchArgs,
};
use crate::client;
use crate::view::{self, ApplyView, ListView, RolloutView};

/// Namespace used when neither `NS/NAME` nor `-n` names one, as in rollout files.
const DEFAULT_NAMESPACE: &str = "default";

/// How long `watch` keeps reading after the rollout finished, for the audit event that records
/// the end (events and status updates travel separately and may arrive in either order).
const FINAL_EVENT_GRACE: Duration = Duration::from_secs(2);

/// Exit code of `watch --timeout` when the deadline passed first (1 means the rollout failed).
const EXIT_TIMEOUT: u8 = 2;

/// Splits `NS/NAME` (or `NAME` with `-n NS`) into a reference.
pub(crate) fn parse_ref(namespace: Option<&str>, target: &str) -> anyhow::Result<pb::RolloutRef> {
    let (ns, name) = match target.split_once('/') {
        Some((ns, name)) => {
            if let Some(flag) = namespace
                && flag != ns
            {
                anyhow::bail!("{target:?} names namespace {ns:?} but -n says {flag:?}");
            }
            (ns, name)
        }
        None => (namespace.unwrap_or(DEFAULT_NAMESPACE), target),
    };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        anyhow::bail!("{target:?} is not NS/NAME");
    }
    Ok(pb::RolloutRef::new(ns, name))
}

fn rollout_ref(arg: &RefArg) -> anyhow::Result<pb::RolloutRef> {
    parse_ref(arg.namespace.as_deref(), &arg.target)
}

/// The manifests `apply` sends for a file's text. A file that is one Aviary Rollout goes as
/// written: the server checks it (and reports its problems) and keeps the text. Any other file
/// (Flagger resources, several documents) is decoded here first, and each rollout goes as the
/// Aviary manifest it decodes to.
///
/// # Errors
/// The file's problems, escaped, one per line.
fn manifests(text: &str) -> anyhow::Result<(Vec<String>, Vec<aviary_core::Warning>)> {
    let single = match aviary_core::parse_rollout(text) {
        Ok(_) => return Ok((vec![text.to_owned()], Vec::new())),
        Err(errors) => errors,
    };
    match aviary_core::decode(text) {
        Ok(decoded) => {
            let manifests = (decoded.rollouts.iter())
                .map(aviary_core::flagger::to_manifest)
                .collect::<Result<_, _>>()?;
            Ok((manifests, decoded.warnings))
        }
        // The same problems as one Aviary document has: let the server say so, as before.
        Err(errors) if errors == single => Ok((vec![text.to_owned()], Vec::new())),
        Err(errors) => {
            let lines: Vec<String> = (errors.errors().iter())
                .map(|e| format!("  {}", view::escape(&e.to_string())))
                .collect();
            anyhow::bail!("the file is not valid:\n{}", lines.join("\n"))
        }
    }
}

/// `aviary apply -f FILE`: one Apply per rollout in the file, in file order; stops at the
/// first refusal. Warnings about the file go to standard error.
pub(crate) async fn apply(args: &ApplyArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let text = crate::offline::read(&args.input)?;
    let (manifests, warnings) = manifests(&text)?;
    crate::offline::print_warnings(&warnings, &mut std::io::stderr())?;
    if manifests.is_empty() {
        anyhow::bail!("the file holds no rollouts");
    }
    let mut api = client::connect(&args.api).await?;
    let mut responses = Vec::new();
    for manifest in manifests {
        let response = api.apply(pb::ApplyRequest { manifest }).await?.into_inner();
        if args.format.output == Format::Table {
            write_applied(&response, out)?;
        }
        responses.push(response);
    }
    if args.format.output != Format::Table {
        let views: Vec<ApplyView> = responses.iter().map(ApplyView::from).collect();
        match views.as_slice() {
            [one] => view::write_structured(args.format.output, one, out)?,
            all => view::write_structured(args.format.output, &all, out)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `<ns/name> applied (generation G, Phase)` or `<ns/name> unchanged (generation G)`.
fn write_applied(response: &pb::ApplyResponse, out: &mut dyn Write) -> std::io::Result<()> {
    let rollout = response.rollout.clone().unwrap_or_default();
    let status = rollout.status.unwrap_or_default();
    let id = view::escape(&rollout.r#ref.unwrap_or_default().to_string());
    if response.changed {
        writeln!(
            out,
            "{id} applied (generation {}, {})",
            status.generation,
            view::phase_name(status.phase)
        )
    } else {
        writeln!(out, "{id} unchanged (generation {})", status.generation)
    }
}

/// `aviary get NS/NAME`.
pub(crate) async fn get(args: &GetArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let reference = rollout_ref(&args.target)?;
    let mut api = client::connect(&args.api).await?;
    let rollout = api
        .get(pb::GetRequest {
            r#ref: Some(reference),
        })
        .await?
        .into_inner();
    match args.format.output {
        Format::Table => view::write_rollouts(std::slice::from_ref(&rollout), out)?,
        format => view::write_structured(format, &RolloutView::from(&rollout), out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `aviary describe NS/NAME`.
pub(crate) async fn describe(args: &GetArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let reference = rollout_ref(&args.target)?;
    let mut api = client::connect(&args.api).await?;
    let rollout = api
        .get(pb::GetRequest {
            r#ref: Some(reference),
        })
        .await?
        .into_inner();
    match args.format.output {
        Format::Table => view::write_description(&rollout, out)?,
        format => view::write_structured(format, &RolloutView::from(&rollout), out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `aviary list [-n NS] [--phase P]`.
pub(crate) async fn list(args: &ListArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut api = client::connect(&args.api).await?;
    let response = api
        .list(pb::ListRequest {
            namespace: args.namespace.clone().unwrap_or_default(),
            phase: args.phase.map_or(0, |p| p as i32),
        })
        .await?
        .into_inner();
    match args.format.output {
        Format::Table if response.rollouts.is_empty() => writeln!(out, "no rollouts")?,
        Format::Table => view::write_rollouts(&response.rollouts, out)?,
        format => view::write_structured(format, &ListView::from(&response), out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Which rollout command to send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Verb {
    /// `Pause`.
    Pause,
    /// `Resume`.
    Resume,
    /// `Abort`.
    Abort,
    /// `Approve`.
    Approve,
    /// `Retry`.
    Retry,
    /// `Delete`.
    Delete,
    /// `ForceDelete`.
    ForceDelete,
}

/// `aviary delete [--force] NS/NAME`.
pub(crate) async fn delete(args: &DeleteArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let verb = if args.force {
        Verb::ForceDelete
    } else {
        Verb::Delete
    };
    command(verb, &args.command, out).await
}

/// `aviary pause|resume|abort|approve|retry|delete NS/NAME`.
pub(crate) async fn command(
    verb: Verb,
    args: &CommandArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let request = pb::CommandRequest {
        r#ref: Some(rollout_ref(&args.target)?),
        reason: args.reason.clone(),
    };
    let mut api = client::connect(&args.api).await?;
    let rollout = match verb {
        Verb::Pause => api.pause(request).await?,
        Verb::Resume => api.resume(request).await?,
        Verb::Abort => api.abort(request).await?,
        Verb::Approve => api.approve(request).await?,
        Verb::Retry => api.retry(request).await?,
        Verb::Delete => api.delete(request).await?,
        Verb::ForceDelete => api.force_delete(request).await?,
    }
    .into_inner();
    if matches!(verb, Verb::Delete | Verb::ForceDelete) && args.format.output == Format::Table {
        let status = rollout.status.clone().unwrap_or_default();
        writeln!(
            out,
            "{}: deleted (was {}, canary {}%)",
            view::escape(&rollout.r#ref.clone().unwrap_or_default().to_string()),
            view::phase_name(status.phase),
            status.canary_weight
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let name = format!("{verb:?}").to_ascii_lowercase();
    accepted(&name, &rollout, args.format.output, out)
}

/// `aviary promote [--full] NS/NAME`.
pub(crate) async fn promote(args: &PromoteArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let request = pb::PromoteRequest {
        r#ref: Some(rollout_ref(&args.target)?),
        full: args.full,
    };
    let mut api = client::connect(&args.api).await?;
    let rollout = api.promote(request).await?.into_inner();
    let name = if args.full { "full promote" } else { "promote" };
    accepted(name, &rollout, args.format.output, out)
}

/// `aviary set-weight NS/NAME WEIGHT`.
pub(crate) async fn set_weight(
    args: &SetWeightArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let request = pb::SetWeightRequest {
        r#ref: Some(rollout_ref(&args.target)?),
        weight: args.weight,
    };
    let mut api = client::connect(&args.api).await?;
    let rollout = api.set_weight(request).await?.into_inner();
    accepted(
        &format!("set-weight {}", args.weight),
        &rollout,
        args.format.output,
        out,
    )
}

/// Reports a queued command. The owner acts on it shortly, so the rollout shown is as it was
/// when the command was recorded.
fn accepted(
    name: &str,
    rollout: &pb::Rollout,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    if format != Format::Table {
        view::write_structured(format, &RolloutView::from(rollout), out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let status = rollout.status.clone().unwrap_or_default();
    writeln!(
        out,
        "{}: {name} accepted (phase {}, canary {}%)",
        view::escape(&rollout.r#ref.clone().unwrap_or_default().to_string()),
        view::phase_name(status.phase),
        status.canary_weight
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The terminal outcome of a phase, if it is one: `Some(true)` succeeded, `Some(false)` failed.
fn finished(phase: i32) -> Option<bool> {
    match pb::Phase::try_from(phase) {
        Ok(pb::Phase::Succeeded) => Some(true),
        Ok(pb::Phase::Failed) => Some(false),
        _ => None,
    }
}

/// `aviary watch NS/NAME`: prints a progress line whenever the weight, step, phase or verdict
/// changes and every audit event of the current generation, until the rollout succeeds (exit 0)
/// or fails (exit 1); with `--timeout`, exit 2 when neither happened in time.
pub(crate) async fn watch(args: &WatchArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let reference = rollout_ref(&args.target)?;
    let mut api = client::connect(&args.api).await?;
    let mut stream = api
        .watch(pb::WatchRequest {
            r#ref: Some(reference.clone()),
        })
        .await?
        .into_inner();
    // A deadline far enough away to mean "never" when no --timeout is given.
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = Instant::now() + args.timeout.unwrap_or(far);
    let mut grace_until = Instant::now() + far;
    let mut last_line = String::new();
    let mut since_generation = None;
    let mut outcome: Option<(bool, u64)> = None;
    // Generation of the last `succeeded`/`rolled-back` event seen, which may precede the status.
    let mut final_event = None;
    loop {
        let message = tokio::select! {
            m = stream.message() => m?,
            () = tokio::time::sleep_until(deadline) => {
                writeln!(out, "{}: still not finished after {:?}", view::escape(&reference.to_string()), args.timeout.unwrap_or(far))?;
                return Ok(ExitCode::from(EXIT_TIMEOUT));
            }
            () = tokio::time::sleep_until(grace_until) => break,
        };
        let Some(message) = message else {
            if outcome.is_some() {
                break;
            }
            anyhow::bail!("the server ended the watch of {reference} before it finished");
        };
        match message.kind {
            Some(pb::watch_event::Kind::Rollout(rollout)) => {
                let status = rollout.status.clone().unwrap_or_default();
                let since = *since_generation.get_or_insert(status.generation);
                if status.generation < since {
                    continue;
                }
                let line = view::progress_line(&rollout);
                if line != last_line {
                    writeln!(out, "{line}")?;
                    last_line = line;
                }
                if outcome.is_none()
                    && let Some(ok) = finished(status.phase)
                {
                    outcome = Some((ok, status.generation));
                    if final_event == Some(status.generation) {
                        break;
                    }
                    grace_until = Instant::now() + FINAL_EVENT_GRACE;
                }
            }
            Some(pb::watch_event::Kind::AuditEvent(text)) => {
                let event = serde_json::from_str::<AuditEvent>(&text).ok();
                let generation = event.as_ref().map(|e| e.data.generation);
                if let (Some(g), Some(since)) = (generation, since_generation)
                    && g < since
                {
                    continue;
                }
                writeln!(out, "{}", view::event_line(&text))?;
                let last = event
                    .as_ref()
                    .and_then(AuditEvent::kind)
                    .is_some_and(|k| matches!(k, EventKind::Succeeded | EventKind::RolledBack));
                if last {
                    final_event = generation;
                    if outcome.is_some_and(|(_, g)| Some(g) == generation) {
                        break;
                    }
                }
            }
            None => {}
        }
    }
    Ok(match outcome {
        Some((true, _)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// `aviary events [--follow] [NS/NAME]`: reads `AVIARY_EVENTS` directly, oldest first.
pub(crate) async fn events(args: &EventsArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let filter = match (&args.target, &args.namespace) {
        (Some(target), namespace) => {
            let r = parse_ref(namespace.as_deref(), target)?;
            names::events_subject(&r.namespace, &r.name)?
        }
        (None, Some(namespace)) => names::events_namespace_filter(namespace)?,
        (None, None) => names::EVENTS_SUBJECTS.to_owned(),
    };
    let client = args.nats.connect("aviary-cli").await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(names::STREAM_EVENTS)
        .await
        .with_context(|| format!("cannot open stream {}", names::STREAM_EVENTS))?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("cannot read the events stream")?;
    let pending = consumer
        .info()
        .await
        .context("cannot read the events stream")?
        .num_pending;
    if pending == 0 && !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the events stream")?;
    while let Some(message) = messages.next().await {
        let message = message.context("reading the events stream")?;
        let text = String::from_utf8_lossy(&message.payload);
        match args.format.output {
            Format::Table => writeln!(out, "{}", view::event_line(&text))?,
            Format::Json => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => writeln!(out, "{value}")?,
                Err(_) => writeln!(out, "{}", serde_json::Value::String(text.into_owned()))?,
            },
            Format::Yaml => {
                let value = serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.into_owned()));
                writeln!(out, "---")?;
                serde_yaml::to_writer(&mut *out, &value)?;
            }
        }
        out.flush()?;
        let caught_up = message.info().map(|i| i.pending == 0).unwrap_or(false);
        if caught_up && !args.follow {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_from_either_form() {
        assert_eq!(
            parse_ref(None, "test/podinfo").unwrap(),
            pb::RolloutRef::new("test", "podinfo")
        );
        assert_eq!(
            parse_ref(Some("test"), "podinfo").unwrap(),
            pb::RolloutRef::new("test", "podinfo")
        );
        assert_eq!(
            parse_ref(None, "podinfo").unwrap(),
            pb::RolloutRef::new("default", "podinfo")
        );
        assert!(parse_ref(Some("other"), "test/podinfo").is_err());
        assert!(parse_ref(None, "a/b/c").is_err());
        assert!(parse_ref(None, "/x").is_err());
    }

    const ROLLOUT: &str = "apiVersion: aviary.dev/v1alpha1\nkind: Rollout\n\
        metadata: { name: web, namespace: test }\n\
        spec:\n  ingresses: [{ name: edge }]\n\
        \x20 primary: { name: web-v1, endpoints: [\"127.0.0.1:9001\"] }\n\
        \x20 canary: { name: web-v2, endpoints: [\"127.0.0.1:9002\"] }\n\
        \x20 analysis: { stepWeight: 50 }\n";

    #[test]
    fn one_aviary_rollout_is_sent_as_written_even_when_invalid() {
        let (sent, warnings) = manifests(ROLLOUT).expect("valid");
        assert_eq!((sent, warnings), (vec![ROLLOUT.to_owned()], Vec::new()));
        let bad = ROLLOUT.replace("stepWeight: 50", "stepWeight: 500");
        let (sent, _) = manifests(&bad).expect("the server reports it");
        assert_eq!(sent, [bad]);
    }

    #[test]
    fn canaries_are_sent_as_the_rollouts_they_decode_to() {
        let text = include_str!("../../tests/fixtures/flagger/canary-other-providers.yaml");
        let (sent, warnings) = manifests(text).expect("valid");
        assert_eq!(sent.len(), 4);
        assert!(!warnings.is_empty());
        let names: Vec<String> = (sent.iter())
            .map(|m| {
                aviary_core::parse_rollout(m)
                    .map(|r| r.metadata.name)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names, ["gateway", "catalog", "agent", "billing"]);
        let both = format!("{ROLLOUT}---\n{text}");
        assert_eq!(manifests(&both).map(|(m, _)| m.len()).ok(), Some(5));
    }

    #[test]
    fn an_invalid_canary_is_refused_here_with_escaped_paths() {
        let text = include_str!("../../tests/fixtures/flagger/canary-linkerd-stepweights.yaml")
            .replace("suspend: false", "\"sus\\epend\": false");
        let e = manifests(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("the file is not valid:\n  spec.sus"), "{e}");
        assert!(e.contains("spec.sus\\u{1b}pend: unknown field"), "{e}");
    }
}
