//! `aviary-scheduler`: see the library docs.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aviary_scheduler::Config::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-scheduler", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_scheduler::run(config, shutdown).await
}
