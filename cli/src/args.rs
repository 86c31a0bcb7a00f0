//! Command-line arguments: one clap enum for every subcommand. Offline commands take a file;
//! online commands flatten [`ApiArgs`] (the control API) or, for `events`, the shared NATS flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Aviary progressive delivery.
#[derive(Debug, Parser)]
#[command(name = "aviary", version, about)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check a rollout file; prints `valid` or one `<field.path>: <problem>` line per problem.
    Validate(ValidateArgs),
    /// Show the weight schedule a rollout file implies and its minimum durations.
    Plan(PlanArgs),
    /// Create or update a rollout on the server from a file.
    Apply(ApplyArgs),
    /// Show one rollout's status.
    Get(GetArgs),
    /// List rollouts.
    List(ListArgs),
    /// Show a rollout in detail: status, step plan, halt reason, last verdict, waiting gates.
    Describe(GetArgs),
    /// Follow a rollout until it succeeds (exit 0) or fails (exit 1), printing its progress.
    Watch(WatchArgs),
    /// Stop advancing at the current step.
    Pause(CommandArgs),
    /// Continue a paused or weight-held rollout.
    Resume(CommandArgs),
    /// Skip the current step (`--full`: promote now, skipping every remaining step and analysis).
    Promote(PromoteArgs),
    /// Roll back to the primary now.
    Abort(CommandArgs),
    /// Open a manual approval gate.
    Approve(CommandArgs),
    /// Restart a failed rollout.
    Retry(CommandArgs),
    /// Hold the canary at an exact weight until resumed.
    SetWeight(SetWeightArgs),
    /// Remove a finished rollout (traffic stays as it left it); abort a running one first, or
    /// `--force` (for one whose route no router agent acknowledges, e.g. its ingress has none).
    Delete(DeleteArgs),
    /// Print audit events from the NATS events stream (`--follow` keeps printing).
    Events(EventsArgs),
    /// Open, close or check a rollout's gate on an `aviary-gate` service.
    Gate(GateArgs),
    /// Serve the web dashboard: rollouts, live progress, and the commands, over the control API.
    Dashboard(DashboardArgs),
}

/// `aviary dashboard`.
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Address the web UI listens on (loopback by default: it acts with the dashboard's token).
    #[arg(
        long = "listen",
        env = "AVIARY_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8470",
        value_name = "ADDR"
    )]
    pub listen: std::net::SocketAddr,
    /// How often the rollout list is read from the API for the pages showing it (the API has
    /// no list watch; a rollout's own page follows its Watch stream).
    #[arg(long = "list-interval", env = "AVIARY_DASHBOARD_LIST_INTERVAL", default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub list_interval: std::time::Duration,
    /// The control API, and the token used for visitors who did not sign in with their own.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// What `aviary gate` does to a rollout's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GateAction {
    /// Let `confirm-*` webhooks pointing at `/gate/check` pass.
    Open,
    /// Hold them again.
    Close,
    /// Print whether the gate is open (exit 0) or closed (exit 1).
    Check,
    /// Ask for a rollback through `rollback` webhooks pointing at `/rollback/check`.
    RollbackOpen,
    /// Withdraw that request.
    RollbackClose,
    /// Print whether a rollback is requested (exit 0) or not (exit 1).
    RollbackCheck,
}

/// `aviary gate`.
#[derive(Debug, Args)]
pub(crate) struct GateArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: GateAction,
    /// The rollout.
    #[command(flatten)]
    pub target: RefArg,
    /// Base URL of the `aviary-gate` service.
    #[arg(
        long = "gate-url",
        env = "AVIARY_GATE_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub url: String,
    /// Bearer token for the gate service (an operator token opens and closes gates).
    #[arg(
        long = "gate-token",
        env = "AVIARY_GATE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file",
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the gate service's bearer token (surrounding whitespace is ignored).
    #[arg(
        long = "gate-token-file",
        env = "AVIARY_GATE_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
}

/// A rollout file to read (`-` for standard input).
#[derive(Debug, Args)]
pub(crate) struct FileArg {
    /// Rollout YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "file", env = "AVIARY_FILE", value_name = "FILE")]
    pub file: PathBuf,
}

/// `aviary validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The file.
    #[command(flatten)]
    pub input: FileArg,
}

/// `aviary plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The file.
    #[command(flatten)]
    pub input: FileArg,
    /// Output format.
    #[arg(short = 'o', long = "output", env = "AVIARY_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// How online commands print results. Separate from [`Output`] so `plan` keeps its formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for programs (the protobuf fields, camelCase, enums by short name).
    Json,
    /// YAML, the same fields as JSON.
    Yaml,
}

/// Where the control API is and how to authenticate to it.
#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// Control API address.
    #[arg(
        long = "server",
        env = "AVIARY_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,
    /// Bearer token for the control API.
    #[arg(
        long = "token",
        env = "AVIARY_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file",
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace is ignored).
    #[arg(long = "token-file", env = "AVIARY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with; enables TLS.
    #[arg(long = "ca-file", env = "AVIARY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mutual TLS; needs `--key-file`.
    #[arg(
        long = "cert-file",
        env = "AVIARY_CERT_FILE",
        value_name = "FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `--cert-file`.
    #[arg(
        long = "key-file",
        env = "AVIARY_KEY_FILE",
        value_name = "FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// How long connecting to the server may take.
    #[arg(long = "connect-timeout", env = "AVIARY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: std::time::Duration,
}

/// Parses `300ms`, `5s`, `2m` with the same rules as rollout files.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    aviary_core::duration::parse_duration(s)
        .map(Into::into)
        .map_err(|e| e.to_string())
}

/// The output format flag of online commands.
#[derive(Debug, Args)]
pub(crate) struct FormatArg {
    /// Output format.
    #[arg(short = 'o', long = "output", env = "AVIARY_OUTPUT", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One rollout: `NS/NAME`, or `-n NS NAME` (namespace `default` when neither says).
#[derive(Debug, Args)]
pub(crate) struct RefArg {
    /// Namespace of the rollout.
    #[arg(
        short = 'n',
        long = "namespace",
        env = "AVIARY_NAMESPACE",
        value_name = "NS"
    )]
    pub namespace: Option<String>,
    /// `NS/NAME`, or `NAME` with `-n`.
    #[arg(value_name = "NS/NAME")]
    pub target: String,
}

/// `aviary apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The file.
    #[command(flatten)]
    pub input: FileArg,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `aviary get` and `aviary describe`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: RefArg,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `aviary list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this namespace (default: all).
    #[arg(
        short = 'n',
        long = "namespace",
        env = "AVIARY_NAMESPACE",
        value_name = "NS"
    )]
    pub namespace: Option<String>,
    /// Only rollouts in this phase (e.g. `Progressing`, `Failed`).
    #[arg(long = "phase", value_parser = parse_phase, value_name = "PHASE")]
    pub phase: Option<aviary_proto::Phase>,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// Accepts `Progressing`, `progressing`, `waiting-promotion`, `PHASE_WAITING_PROMOTION`.
pub(crate) fn parse_phase(s: &str) -> Result<aviary_proto::Phase, String> {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let wanted = squash(s);
    let wanted = wanted.strip_prefix("phase").unwrap_or(&wanted);
    let phases = (1..=20).filter_map(|i| aviary_proto::Phase::try_from(i).ok());
    let mut names = Vec::new();
    for phase in phases {
        let name = format!("{phase:?}");
        if squash(&name) == wanted {
            return Ok(phase);
        }
        names.push(name);
    }
    Err(format!("unknown phase; one of: {}", names.join(", ")))
}

/// `aviary watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: RefArg,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Give up (exit 2) when the rollout has not finished after this long.
    #[arg(long = "timeout", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
}

/// `aviary pause|resume|abort|approve|retry`.
#[derive(Debug, Args)]
pub(crate) struct CommandArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: RefArg,
    /// Why, recorded with the command.
    #[arg(long = "reason", default_value = "", value_name = "TEXT")]
    pub reason: String,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `aviary delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Delete whatever the rollout's state: one still moving traffic, or one waiting for a
    /// route acknowledgement that never comes (its ingress has no router agent). Audited as a
    /// forced deletion; traffic stays as it is.
    #[arg(long = "force")]
    pub force: bool,
    /// The rollout, reason, server and output format.
    #[command(flatten)]
    pub command: CommandArgs,
}

/// `aviary promote`.
#[derive(Debug, Args)]
pub(crate) struct PromoteArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: RefArg,
    /// Promote now: skip every remaining step and its analysis, not only the current step.
    #[arg(long = "full")]
    pub full: bool,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `aviary set-weight`.
#[derive(Debug, Args)]
pub(crate) struct SetWeightArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: RefArg,
    /// Canary weight to hold, 0–100.
    #[arg(value_name = "WEIGHT")]
    pub weight: u32,
    /// The server.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `aviary events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only this namespace; with `NAME`, the rollout's namespace.
    #[arg(
        short = 'n',
        long = "namespace",
        env = "AVIARY_NAMESPACE",
        value_name = "NS"
    )]
    pub namespace: Option<String>,
    /// Only this rollout: `NS/NAME`, or `NAME` with `-n`.
    #[arg(value_name = "NS/NAME")]
    pub target: Option<String>,
    /// Keep printing new events as they are stored.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// Output format (`json` and `yaml` print each CloudEvent as stored).
    #[command(flatten)]
    pub format: FormatArg,
    /// NATS connection.
    #[command(flatten)]
    pub nats: aviary_bus::NatsArgs,
}
