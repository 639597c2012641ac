//! The networked commands: `serve`, `join`, `tail`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use crdt_model::DocId;
use peer::Store;
use peer::node::{Node, NodeConfig, NodeEvent};

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

pub fn serve(home: &Path, bind: SocketAddr, out: &mut Out) -> Result<()> {
    runtime()?.block_on(async {
        let node = start(home, bind).await?;
        let addr = node.addr();
        out.serving(&addr.id.to_string(), &addr.addrs)?;
        let mut events = node.subscribe();
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                ev = events.recv() => match ev {
                    Ok(NodeEvent::PeerUp(p)) => out.peer_event("connected", &p.to_string())?,
                    Ok(NodeEvent::PeerDown(p)) => out.peer_event("disconnected", &p.to_string())?,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
            }
        }
        out.note("stopping: saving sync state…")?;
        node.shutdown().await;
        Ok(())
    })
}

/// `flyt serve --ui`: the node behind the app's API, and the UI over HTTP.
pub fn serve_ui(
    home: &Path,
    bind: SocketAddr,
    ui_addr: SocketAddr,
    ui_dir: Result<std::path::PathBuf, String>,
    out: &mut Out,
) -> Result<()> {
    crate::ui::check_loopback(ui_addr)?;
    runtime()?.block_on(crate::ui::run(
        home,
        bind,
        ui_addr,
        ui_dir,
        out,
        stop_signal(),
    ))
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

/// Prints new messages and changes to shown ones as they land in the database (written by a
/// running `flyt serve`, or by another `flyt` command).
pub fn tail(store: Store, channel: DocId, out: &mut Out) -> Result<()> {
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
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tick.tick() => {}
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
