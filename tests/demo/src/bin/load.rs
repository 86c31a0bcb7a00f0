//! `aviary-load`: see `aviary_demo::load`.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Fixed-rate HTTP load; prints a JSON summary of what came back"
)]
struct Cli {
    #[command(flatten)]
    load: aviary_demo::load::LoadConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    let summary = aviary_demo::load::run(cli.load, shutdown).await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
