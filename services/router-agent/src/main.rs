//! `aviary-router-agent`: see the library for what it does.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aviary_router_agent::Config::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-router-agent", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_router_agent::run(config, shutdown).await
}
