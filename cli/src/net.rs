//! The networked commands: `serve`, `join`, `tail`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use crdt_model::DocId;
use peer::Store;
use peer::api::Api;
use peer::node::{Node, NodeConfig, NodeEvent};
use tokio_util::sync::CancellationToken;

use crate::output::Out;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn start(home: &Path, bind: SocketAddr) -> Result<Node> {
    Node::start(NodeConfig {
        db: home.join("flyt.db"),
        bind,
        lan: false,
        relay_only: false,
    })
    .await
    .context("starting the node")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// How `flyt serve` reaches the network (its flags).
pub struct Reach {
    /// `--bind`.
    pub bind: SocketAddr,
    /// `--lan`.
    pub lan: bool,
    /// `--relay-only`.
    pub relay_only: bool,
}

/// `flyt serve [--ui ADDR]`: the node behind the app's API, the control socket every other
/// `flyt` command on this home goes through, and with `ui` the app's UI over HTTP; until
/// Ctrl-C or SIGTERM.
pub fn serve(
    home: &Path,
    net: Reach,
    ui: Option<(SocketAddr, Result<PathBuf, String>)>,
    out: &mut Out,
) -> Result<()> {
    if let Some((addr, _)) = &ui {
        crate::ui::check_loopback(*addr)?;
    }
    runtime()?.block_on(async {
        let mut control = crate::control::Listener::bind(home)?;
        let http = match &ui {
            Some((addr, _)) => {
                let token = crate::ui::new_token();
                let (listener, url) = crate::ui::listen(*addr, &token).await?;
                Some((listener, url, token))
            }
            None => None,
        };
        let api = Arc::new(
            Api::open_home(home, net.bind, net.lan, net.relay_only)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))
                .context("starting the node")?,
        );
        let stop = CancellationToken::new();
        let mut events = None;
        let mut server = None;
        match (http, ui) {
            (Some((listener, url, token)), Some((_, dir))) => {
                if let Err(why) = &dir {
                    tracing::warn!("{why}");
                    out.note(&format!("note: {why}; the API works, the page does not"))?;
                }
                out.ui_url(&url)?;
                server = Some(tokio::spawn(crate::ui::serve(
                    listener,
                    api.clone(),
                    token,
                    dir,
                    stop.clone(),
                )));
            }
            _ => {
                let node = api
                    .node()
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))
                    .context("starting the node")?;
                out.serving(&node.addr())?;
                events = Some(node.subscribe());
            }
        }
        let control = {
            let (api, home, stop) = (api.clone(), home.to_owned(), stop.clone());
            tokio::spawn(async move { control.serve(api, home, stop).await })
        };
        let signal = stop_signal();
        tokio::pin!(signal);
        loop {
            let ev = async {
                match events.as_mut() {
                    Some(e) => e.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut signal => break,
                ev = ev => match ev {
                    Ok(NodeEvent::PeerUp(p)) => out.peer_event("connected", &p.to_string())?,
                    Ok(NodeEvent::PeerDown(p)) => out.peer_event("disconnected", &p.to_string())?,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
            }
        }
        out.note("stopping: saving sync state…")?;
        stop.cancel();
        if let Err(e) = control.await {
            tracing::warn!("control socket task: {e}");
        }
        if let Some(s) = server {
            s.await.context("the UI server task")??;
        }
        api.shutdown().await;
        Ok(())
    })
}

/// Waits until no node event has come for `quiet`, at most `max`.
async fn settle(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    quiet: Duration,
    max: Duration,
) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let until = (tokio::time::Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Waits until workspace `ws` arrived through sync, then until the rest settles (its
/// channels and the newest messages come next).
async fn fetch(
    _node: &Node,
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    ws: DocId,
) -> Result<()> {
    let got_ws = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Changed(d)) if d == ws => return true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    if !got_ws {
        anyhow::bail!(
            "the other side accepted the ticket but the workspace did not arrive within 30 s"
        );
    }
    settle(events, Duration::from_millis(500), Duration::from_secs(30)).await;
    Ok(())
}

/// `flyt device join`: becomes a device of the ticket's person, then fetches every workspace.
pub fn device_join(home: &Path, ticket: &str, bind: SocketAddr, out: &mut Out) -> Result<()> {
    runtime()?.block_on(async {
        let workspaces = peer::node::link_device(&home.join("flyt.db"), bind, ticket)
            .await
            .context("linking this device")?;
        let node = start(home, bind).await?;
        let mut events = node.subscribe();
        for ws in workspaces.iter().copied() {
            // A workspace may have arrived while waiting for another.
            let have = node
                .call(move |s| s.find_workspace(&ws.to_string()).is_ok())
                .await?;
            if !have && let Err(e) = fetch(&node, &mut events, ws).await {
                node.shutdown().await;
                return Err(e);
            }
        }
        let name = node
            .call(|s: &mut Store| s.identity().map(|i| i.name.clone()))
            .await??;
        node.shutdown().await;
        out.linked(&name, workspaces.len())?;
        Ok(())
    })
}

pub fn join(home: &Path, ticket: &str, bind: SocketAddr, out: &mut Out) -> Result<()> {
    runtime()?.block_on(async {
        let node = start(home, bind).await?;
        let mut events = node.subscribe();
        let ws = match node.join(ticket).await {
            Ok(ws) => ws,
            Err(e) => {
                node.shutdown().await;
                return Err(e).context("joining");
            }
        };
        if let Err(e) = fetch(&node, &mut events, ws).await {
            node.shutdown().await;
            return Err(e);
        }
        let summary = node
            .call(
                move |s: &mut Store| -> Result<(String, usize), peer::StoreError> {
                    s.use_workspace(ws)?;
                    let name = s.identity()?.name.clone();
                    s.set_profile(ws, &name)?;
                    let w = s
                        .workspaces()?
                        .into_iter()
                        .find(|w| w.id == ws.to_string())
                        .map(|w| w.name)
                        .unwrap_or_default();
                    Ok((w, s.channels()?.len()))
                },
            )
            .await??;
        // Let the profile (our display name) reach the inviter before we go.
        settle(
            &mut events,
            Duration::from_millis(300),
            Duration::from_secs(5),
        )
        .await;
        node.shutdown().await;
        out.joined(&summary.0, &ws.to_string(), summary.1)?;
        Ok(())
    })
}

/// Ephemeral events (typing, presence) from the running node's control socket, forwarded to
/// `tx`; reconnects while `tail` runs, since a node may start (or restart) after it.
fn ephemeral_events(
    home: std::path::PathBuf,
    tx: tokio::sync::mpsc::UnboundedSender<serde_json::Value>,
) {
    std::thread::spawn(move || {
        loop {
            if let Ok(Some(events)) = crate::control::events(&home) {
                for ev in events {
                    let kind = ev["type"].as_str().unwrap_or_default();
                    if matches!(kind, "typing" | "presence") && tx.send(ev).is_err() {
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// Prints new messages and changes to shown ones as they land in the database (written by a
/// running `flyt serve`, or by another `flyt` command), and who is typing in the channel or
/// comes and goes (from the running node).
pub fn tail(store: Store, home: &Path, channel: DocId, out: &mut Out) -> Result<()> {
    let (tx, mut ephemeral) = tokio::sync::mpsc::unbounded_channel();
    ephemeral_events(home.to_owned(), tx);
    runtime()?.block_on(async move {
        let mut store = store;
        let mut shown = store.read(channel, 20, None, None)?;
        for m in &shown {
            out.tail_message("message", m)?;
        }
        let mut last_version = store.data_version()?;
        let stop = stop_signal();
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let me = store.identity()?.person_id().to_string();
        let channel_id = channel.to_string();
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tick.tick() => {}
                Some(ev) = ephemeral.recv() => {
                    let mine = ev["person"].as_str() == Some(me.as_str());
                    match ev["type"].as_str() {
                        Some("typing") if ev["channel"].as_str() == Some(channel_id.as_str()) && !mine => {
                            out.ephemeral(&ev)?
                        }
                        Some("presence") if !mine => out.ephemeral(&ev)?,
                        _ => {}
                    }
                    continue;
                }
            }
            let v = store.data_version()?;
            if v == last_version {
                continue;
            }
            last_version = v;
            let latest = store.read(channel, 200, None, None)?;
            for m in &latest {
                match shown.iter().find(|s| s.id == m.id) {
                    None => out.tail_message("message", m)?,
                    Some(old) if old.deleted != m.deleted => out.tail_message("delete", m)?,
                    Some(old) if old.text != m.text => out.tail_message("edit", m)?,
                    Some(old) if old.reactions != m.reactions => {
                        out.tail_message("reactions", m)?
                    }
                    Some(old) if old.reply_count != m.reply_count => {
                        out.tail_message("thread", m)?
                    }
                    Some(_) => {}
                }
            }
            shown = latest;
            let _ = store.maintain();
            let _ = &mut store;
        }
    })
}
