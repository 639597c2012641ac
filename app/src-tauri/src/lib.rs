//! `app`: the Flyt desktop app (binary `flyt-app`), a Tauri 2 shell around `peer::api::Api`.
//!
//! The web view only renders: every request goes through ONE Tauri command, `api`, which hands
//! the JSON request to [`Api::handle_json`] on Tauri's async runtime (never the main thread)
//! and resolves with its result or rejects with the `ApiError` JSON (`{code, message}`). The
//! API's batched event stream is forwarded to the window as the event `flyt://events`, each
//! payload one JSON array of events. The contract is `peer/src/api.md`; on the front end,
//! `app/ui/src/api.ts` is the only module that knows it talks to Tauri.
//!
//! The window appears at once; the node is opened beside it (its first request waits for it),
//! so a slow disk or a network bind never delays the first paint.
#![deny(missing_docs)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use peer::api::{Api, ApiError, next_batch};
use serde_json::Value;
use tauri::{Emitter, Manager, RunEvent};
use tokio::sync::OnceCell;

/// The event every batch of API events is emitted as.
pub const EVENTS: &str = "flyt://events";

/// Where the node listens when `FLYT_BIND` is not set: every interface, any port (as `flyt
/// serve`).
pub const DEFAULT_BIND: &str = "0.0.0.0:0";

/// What the app runs on, from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The home folder: `$FLYT_HOME`, else the same default as the CLI's (the data folder's
    /// `flyt`, e.g. `~/.local/share/flyt`).
    pub home: PathBuf,
    /// The node's UDP address: `$FLYT_BIND`, else [`DEFAULT_BIND`].
    pub bind: SocketAddr,
}

impl Config {
    /// Reads `FLYT_HOME` and `FLYT_BIND`.
    pub fn from_env() -> Result<Config, String> {
        Config::from_vars(
            std::env::var_os("FLYT_HOME"),
            std::env::var_os("FLYT_BIND"),
            peer::home::data_home(),
        )
    }

    fn from_vars(
        home: Option<OsString>,
        bind: Option<OsString>,
        data_home: Option<PathBuf>,
    ) -> Result<Config, String> {
        let home = match home {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => data_home.ok_or(
                "no data folder for this user: set FLYT_HOME to the folder Flyt should use",
            )?,
        };
        let bind = match bind {
            Some(b) if !b.is_empty() => {
                let text = b.to_string_lossy();
                text.parse().map_err(|_| {
                    format!("FLYT_BIND={text:?} is not an address like 127.0.0.1:0 or 0.0.0.0:4433")
                })?
            }
            _ => DEFAULT_BIND
                .parse()
                .expect("the default bind address parses"),
        };
        Ok(Config { home, bind })
    }
}

/// The app's state: the API over the home, opened once, on first need.
struct Shell {
    cfg: Config,
    api: OnceCell<Result<Arc<Api>, ApiError>>,
}

impl Shell {
    /// The API, opening it (and starting the node, if the home has an identity) the first
    /// time. A home that cannot be opened fails every request with the same clear error.
    async fn api(&self) -> Result<Arc<Api>, ApiError> {
        self.api
            .get_or_init(|| async {
                let api = Api::open_home(&self.cfg.home, self.cfg.bind, false, false).await;
                match &api {
                    Ok(_) => tracing::info!("flyt-app: home {}", self.cfg.home.display()),
                    Err(e) => tracing::error!("flyt-app: opening {}: {e}", self.cfg.home.display()),
                }
                api.map(Arc::new)
            })
            .await
            .clone()
    }
}

/// The one command: `invoke("api", { req })`, `req` being an API request (`{"cmd": ...}`).
#[tauri::command]
async fn api(shell: tauri::State<'_, Shell>, req: Value) -> Result<Value, ApiError> {
    shell.api().await?.handle_json(req).await
}

/// Forwards every event batch to the web view until the API stops.
async fn forward_events(app: tauri::AppHandle) {
    let shell = app.state::<Shell>();
    let Ok(api) = shell.api().await else {
        return; // each request says why
    };
    let mut rx = api.subscribe();
    drop(api);
    while let Some(batch) = next_batch(&mut rx).await {
        if let Err(e) = app.emit(EVENTS, &*batch) {
            tracing::warn!("flyt-app: sending events to the window: {e}");
        }
    }
}

/// Ctrl-C or SIGTERM close the app the same way the window's close button does.
async fn exit_on_signal(app: tauri::AppHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
    }
    tracing::info!("flyt-app: stopping on a signal");
    app.exit(0);
}

/// Opens the window and runs until it is closed (or a signal arrives); then stops the node
/// cleanly (sync states saved, storage flushed).
pub fn run(cfg: Config) -> tauri::Result<()> {
    let app = tauri::Builder::default()
        .manage(Shell {
            cfg,
            api: OnceCell::new(),
        })
        .invoke_handler(tauri::generate_handler![api])
        .setup(|app| {
            tauri::async_runtime::spawn(forward_events(app.handle().clone()));
            tauri::async_runtime::spawn(exit_on_signal(app.handle().clone()));
            Ok(())
        })
        .build(tauri::generate_context!())?;
    app.run(|app, event| {
        if let RunEvent::Exit = event {
            let shell = app.state::<Shell>();
            if let Some(Ok(api)) = shell.api.get() {
                tauri::async_runtime::block_on(api.shutdown());
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Option<PathBuf> {
        Some(PathBuf::from("/data/flyt"))
    }

    #[test]
    fn the_home_is_flyt_home_else_the_clis_default() {
        let c = Config::from_vars(Some("/tmp/h".into()), None, data()).unwrap();
        assert_eq!(c.home, PathBuf::from("/tmp/h"));
        assert_eq!(c.bind, DEFAULT_BIND.parse().unwrap());
        let c = Config::from_vars(Some("".into()), None, data()).unwrap();
        assert_eq!(c.home, PathBuf::from("/data/flyt"));
        let c = Config::from_vars(None, Some("127.0.0.1:4433".into()), data()).unwrap();
        assert_eq!(c.bind, "127.0.0.1:4433".parse().unwrap());
    }

    #[test]
    fn bad_settings_say_what_to_do() {
        let e = Config::from_vars(None, Some("localhost".into()), data()).unwrap_err();
        assert!(
            e.contains("FLYT_BIND=\"localhost\" is not an address"),
            "{e}"
        );
        let e = Config::from_vars(None, None, None).unwrap_err();
        assert!(e.contains("set FLYT_HOME"), "{e}");
    }
}
