//! `videodelivery-agent`: see `--help`.

use anyhow::Result;
use clap::Parser;
use videodelivery_agent::config::{Config, LogFormat};
use videodelivery_agent::{Agent, Workers};

fn main() -> Result<()> {
    let config = Config::parse();
    // This runtime runs the admin port, the keyring and certificate watchers and shutdown; the video port's
    // connections are served by worker threads of their own (`Workers::Threads`). Storage calls take at most
    // --max-storage-threads blocking threads, even when stuck; the rest of the default allowance stays free for
    // other blocking work (DNS lookups, the keyring), so stuck storage cannot starve it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(config.max_storage_threads as usize + 512)
        .build()?;
    let result = runtime.block_on(run(config));
    // A storage read stuck in the kernel (a hung network file system) holds a blocking thread that nothing can
    // cancel; waiting for it would keep the process alive past every grace period.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run(config: Config) -> Result<()> {
    // h2 and hyper log a peer's protocol misbehaviour (an unsolicited PING ACK, a reset) at WARN, once per frame: an
    // unauthenticated client could multiply log lines at will. They stay visible with RUST_LOG=h2=debug.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=error,hyper=error,hyper_util=error".into());
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    let agent = Agent::bind(config).await?;
    tracing::info!(addr = %agent.addr, admin = %agent.admin_addr, workers, "serving");
    let workers = Workers::Threads(workers);
    agent.serve_with(workers, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
