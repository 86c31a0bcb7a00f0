//! `aviary`: the command-line tool. Offline commands (`validate`, `plan`) read a rollout file;
//! online commands (apply, get, watch, pause, …) join the same [`args::Command`] enum later.

mod args;
mod offline;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match &cli.command {
        args::Command::Validate(a) => offline::validate(a, &mut out),
        args::Command::Plan(a) => offline::plan(a, &mut out),
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
