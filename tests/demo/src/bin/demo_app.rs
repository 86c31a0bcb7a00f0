//! `aviary-demo-app`: see `aviary_demo::app`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Demo app: reports its version; configurable errors and latency")]
struct Cli {
    #[command(flatten)]
    app: aviary_demo::app::AppConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.app.listen).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    #[cfg(unix)]
    {
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                trigger.cancel();
            }
        });
    }
    aviary_demo::app::serve(listener, cli.app, shutdown).await?;
    Ok(())
}
