//! `aviary-controller`: runs Aviary rollouts from Kubernetes resources. `aviary-controller crds`
//! prints Aviary's CRDs, `aviary-controller crds --flagger` Flagger's.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("crds") {
        let crds = if args.any(|a| a == "--flagger") {
            aviary_controller::crd::flagger_crds()
        } else {
            aviary_controller::crd::aviary_crds()
        };
        print!("{}", aviary_controller::crd::to_yaml(&crds)?);
        return Ok(());
    }
    let config = aviary_controller::Config::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-controller", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_controller::run(config, shutdown).await
}
