//! `/relay`: iroh's relay protocol (the `iroh-relay` crate's [`RelayService`], embedded), so
//! members' nodes that cannot reach each other directly (NATs, firewalls) still connect,
//! through this relay, end-to-end encrypted: the relay forwards QUIC packets it cannot read.
//! Nodes learn to use it from the workspace document (`flyt relay add URL`); iroh moves a
//! connection to a direct path when hole punching succeeds.
//!
//! It shares the relay's HTTP port: [`SplitListener`] looks at the first bytes of every
//! accepted TCP connection and hands `GET /relay` upgrades to the relay service (which needs
//! the raw stream), everything else to Axum. A connection that sends nothing within
//! [`SNIFF_TIMEOUT`] is dropped.
//!
//! Who may use it ([`Members`]): the devices of current members of the workspaces this relay
//! serves, and a device presenting a valid, unexpired invite to one of them as its bearer token
//! (a joiner, who must reach the inviter before it is a member). Everyone else is refused at the
//! handshake. `GET /ping` (iroh's latency probe, which picks a node's home relay) is open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crdt_model::DeviceId;
use iroh_relay::KeyCache;
use iroh_relay::server::http_server::{Handlers, RelayService};
use iroh_relay::server::{Access, AccessControl, ClientRequest, Metrics};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::runtime::RelayHandle;

/// How long a new TCP connection may take to send its request line.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a `/relay` connection may take to finish its WebSocket and relay handshakes.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections sniffed and waiting for Axum.
const QUEUE: usize = 256;

/// The request line prefix that goes to the relay service.
const RELAY_REQUEST: &[u8] = b"GET /relay";

/// The relay's admission policy for `/relay`: current members' devices, invite holders, and the
/// relay's own endpoint (its home relay is this one, so relay-only nodes reach it too).
#[derive(Debug, Clone)]
pub struct Members {
    relay: RelayHandle,
    me: DeviceId,
}

impl AccessControl for Members {
    async fn on_connect(&self, request: &ClientRequest) -> Access {
        let device = DeviceId(*request.endpoint_id().as_bytes());
        if device == self.me {
            return Access::Allow;
        }
        let invite = request.auth_token();
        let admitted = self
            .relay
            .call(move |s| s.admits(&device, invite.as_deref()))
            .await
            .unwrap_or(false);
        if admitted {
            debug!(%device, "relay client admitted");
            Access::Allow
        } else {
            debug!(%device, "relay client refused: not a member's device");
            Access::Deny {
                reason: Some(
                    "this relay serves only members of its workspaces (and holders of an invite)"
                        .into(),
                ),
            }
        }
    }
}

/// The embedded iroh relay service, admitting what [`Members`] admits; `me` is the relay's own
/// endpoint.
pub fn service(relay: RelayHandle, me: DeviceId) -> RelayService {
    RelayService::new(
        Handlers::default(),
        axum::http::HeaderMap::new(),
        None,
        KeyCache::new(1024),
        Arc::new(Members { relay, me }),
        Arc::new(Metrics::default()),
    )
}

/// An Axum listener over the relay's TCP listener that keeps `/relay` connections for the
/// iroh relay service (see the module docs).
#[derive(Debug)]
pub struct SplitListener {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl SplitListener {
    /// Starts sniffing connections from `listener`; `/relay` ones go to `relay`. Stops when
    /// `cancel` fires (then also shutting the relay service's clients down).
    pub fn new(
        listener: TcpListener,
        relay: RelayService,
        cancel: CancellationToken,
    ) -> std::io::Result<SplitListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (stream, from) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, as axum::serve does.
                        warn!("accepting an HTTP connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tx, relay) = (tx.clone(), relay.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(SNIFF_TIMEOUT, is_relay_request(&stream)).await {
                        Ok(Ok(true)) => {
                            relay
                                .handle_connection(stream, None, ESTABLISH_TIMEOUT)
                                .await
                        }
                        Ok(Ok(false)) => {
                            let _ = tx.send((stream, from)).await;
                        }
                        Ok(Err(e)) => debug!(%from, "connection failed before a request: {e}"),
                        Err(_) => debug!(%from, "no request within {SNIFF_TIMEOUT:?}: dropped"),
                    }
                });
            }
            relay.shutdown().await;
        });
        Ok(SplitListener { rx, local })
    }
}

impl axum::serve::Listener for SplitListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The sniffer stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Whether the connection's first bytes are `GET /relay` followed by a space or `?` (peeked,
/// not consumed). Waits until enough bytes arrived to tell; `false` for anything else,
/// including a connection closed early.
async fn is_relay_request(stream: &TcpStream) -> std::io::Result<bool> {
    let need = RELAY_REQUEST.len() + 1;
    let mut buf = [0u8; 16];
    loop {
        let n = stream.peek(&mut buf).await?;
        let seen = &buf[..n];
        let common = n.min(RELAY_REQUEST.len());
        if n == 0 || seen[..common] != RELAY_REQUEST[..common] {
            return Ok(false);
        }
        if n >= need {
            return Ok(matches!(seen[RELAY_REQUEST.len()], b' ' | b'?'));
        }
        // A prefix of it so far: the rest is on its way (peek returns what is there at once).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniff(parts: &[&[u8]]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for p in parts {
                c.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let (s, _) = listener.accept().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), is_relay_request(&s))
            .await
            .unwrap()
            .unwrap();
        client.abort();
        r
    }

    #[tokio::test]
    async fn only_relay_upgrades_are_taken_from_axum() {
        assert!(sniff(&[b"GET /relay HTTP/1.1\r\n"]).await);
        assert!(sniff(&[b"GET /relay?token=x HTTP/1.1\r\n"]).await);
        // Split across packets.
        assert!(sniff(&[b"GE", b"T /rel", b"ay HTTP/1.1\r\n"]).await);
        assert!(!sniff(&[b"GET /relays HTTP/1.1\r\n"]).await);
        assert!(!sniff(&[b"GET /info HTTP/1.1\r\n"]).await);
        assert!(!sniff(&[b"POST /relay HTTP/1.1\r\n"]).await);
        // Closed before saying anything.
        assert!(!sniff(&[]).await);
    }
}
