//! `aviary-scheduler`: see the library docs.

use clap::Parser as _;

/// Thousands of driver tasks allocate on every decision; glibc's allocator spends much of that
/// time on its arena locks (the scale bench measured it), mimalloc's per-thread heaps do not.
/// Built with `no_thp`: with transparent huge pages its first arena alone was 12 MB resident in
/// an idle scheduler (idle RSS 24 MB against 13 MB without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aviary_scheduler::Config::parse();
    let _telemetry = aviary_runtime::telemetry::init("aviary-scheduler", &config.common)?;
    let shutdown = aviary_runtime::shutdown::on_signals();
    aviary_scheduler::run(config, shutdown).await
}
