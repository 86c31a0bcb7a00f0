//! `aviary-notifier`: posts rollout events from the audit stream to chat tools.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aviary_notifier::Config::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-notifier", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_notifier::run(config, shutdown).await
}
