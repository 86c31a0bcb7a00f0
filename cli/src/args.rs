//! Command-line arguments: one clap enum for every subcommand, so online commands can be added
//! next to the offline ones.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Aviary progressive delivery.
#[derive(Debug, Parser)]
#[command(name = "aviary", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a rollout file; prints `valid` or one `<field.path>: <problem>` line per problem.
    Validate(ValidateArgs),
    /// Show the weight schedule a rollout file implies and its minimum durations.
    Plan(PlanArgs),
}

/// A rollout file to read (`-` for standard input).
#[derive(Debug, Args)]
pub struct FileArg {
    /// Rollout YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "file", env = "AVIARY_FILE", value_name = "FILE")]
    pub file: PathBuf,
}

/// `aviary validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The file.
    #[command(flatten)]
    pub input: FileArg,
}

/// `aviary plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The file.
    #[command(flatten)]
    pub input: FileArg,
    /// Output format.
    #[arg(short = 'o', long = "output", env = "AVIARY_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}
