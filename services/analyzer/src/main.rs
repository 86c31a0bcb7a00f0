//! `aviary-analyzer`: see the library for what it does and the flags.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aviary_analyzer::Config::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-analyzer", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_analyzer::run(config, shutdown).await
}
