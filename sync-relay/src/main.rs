//! `flyt-relay`: run the self-hosted Flyt relay until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sync_relay::config::{Config, Overrides};
use sync_relay::runtime::Relay;
use tracing_subscriber::EnvFilter;

/// The self-hosted Flyt relay: store-and-forward sync for the workspaces that add it.
#[derive(Debug, Parser)]
#[command(name = "flyt-relay", version)]
struct Cli {
    /// A TOML config file (every key is documented in `sync_relay::config::Config`).
    #[arg(long, env = "FLYT_RELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(
                // iroh's relay transport: see peer::net::QUIET_LOGS.
                "info,iroh=warn,iroh::socket::transports::relay=off,tower_http=info",
            )
        }))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flyt-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref(), &cli.overrides)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let (_, ext) = sync_relay::archive::extensions(&config)
            .await
            .context("opening the archive")?;
        let relay = Relay::start(config, ext)
            .await
            .context("starting the relay")?;
        stop_signal().await;
        relay.shutdown().await;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
