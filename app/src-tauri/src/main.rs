//! `flyt-app`: the Flyt desktop app. `FLYT_HOME` picks the home (default: the CLI's, e.g.
//! `~/.local/share/flyt`), `FLYT_BIND` the node's UDP address (default `0.0.0.0:0`),
//! `RUST_LOG` the log level (default `warn`).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(peer::net::QUIET_LOGS)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match app::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flyt-app: {e}");
            return ExitCode::from(2);
        }
    };
    match app::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flyt-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}
