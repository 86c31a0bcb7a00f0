//! `aviary`: the command-line tool. Offline commands (`validate`, `plan`) read a rollout file;
//! online commands talk to the scheduler's gRPC control API (`apply`, `get`, `watch`, `pause`, …)
//! or read the audit stream from NATS (`events`); `dashboard` serves a web UI over the control
//! API.
//!
//! Exit codes: 0 success; 1 an error, an invalid file, a refused call (printed as
//! `error: <code>: <message>`) or a watched rollout that failed; 2 a `watch --timeout` that ran
//! out, or bad flags.

mod args;
mod client;
mod dashboard;
mod gate;
mod offline;
mod online;
mod view;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use args::Command;
use online::Verb;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match &cli.command {
        Command::Validate(a) => offline::validate(a, &mut out),
        Command::Plan(a) => offline::plan(a, &mut out),
        online => run_online(online, &mut out),
    };
    let _ = out.flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`aviary plan | head`) is not an error worth reporting.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            // Errors carry the server's words (a status message, a gate service's body):
            // escaped, as everything else printed from outside.
            let message = match e.downcast_ref::<tonic::Status>() {
                Some(status) => client::describe_status(status),
                None => format!("{e:#}"),
            };
            eprintln!("error: {}", view::escape_lines(&message));
            ExitCode::FAILURE
        }
    }
}

/// Runs one online command on a single-threaded runtime: the CLI does one thing at a time.
fn run_online(command: &Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::Validate(a) => offline::validate(a, out),
            Command::Plan(a) => offline::plan(a, out),
            Command::Apply(a) => online::apply(a, out).await,
            Command::Get(a) => online::get(a, out).await,
            Command::List(a) => online::list(a, out).await,
            Command::Describe(a) => online::describe(a, out).await,
            Command::Watch(a) => online::watch(a, out).await,
            Command::Pause(a) => online::command(Verb::Pause, a, out).await,
            Command::Resume(a) => online::command(Verb::Resume, a, out).await,
            Command::Promote(a) => online::promote(a, out).await,
            Command::Abort(a) => online::command(Verb::Abort, a, out).await,
            Command::Approve(a) => online::command(Verb::Approve, a, out).await,
            Command::Retry(a) => online::command(Verb::Retry, a, out).await,
            Command::SetWeight(a) => online::set_weight(a, out).await,
            Command::Delete(a) => online::delete(a, out).await,
            Command::Events(a) => online::events(a, out).await,
            Command::Gate(a) => gate::run(a, out).await,
            Command::Dashboard(a) => dashboard::run(a, out).await,
        }
    })
}
