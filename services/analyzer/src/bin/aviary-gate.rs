//! `aviary-gate`: durable manual gates for rollout webhooks (see `aviary_analyzer::gate`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aviary_analyzer::gate::GateConfig::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-gate", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_analyzer::gate::run_gate(config, shutdown).await
}
