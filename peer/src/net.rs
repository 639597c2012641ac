//! The transport the sync engine runs over: iroh QUIC between Flyt nodes, speaking the Flyt
//! ALPN ([`ALPN`]) and carrying [`Frame`]s.
//!
//! A node has one [`Transport`]: an iroh endpoint whose key is the device's ed25519 key, so
//! the endpoint id *is* the [`DeviceId`] and every connection is authenticated by it. It never
//! touches the internet on its own: no public relays, no address lookup over DNS or pkarr, no
//! port mapping; mDNS on the local network only when asked ([`Transport::enable_lan`]). Peers are dialled on the direct addresses of a [`PeerAddr`] and, when the
//! workspace has a `flyt-relay`, through that relay's `/relay` (iroh's relay protocol, end-to-end
//! encrypted): [`Transport::add_relay`] adds one, and from then on every dial also offers the
//! relay path, so two nodes behind NATs still reach each other (iroh moves the connection to a
//! direct path when hole punching succeeds).
//!
//! # One stream per connection, and who opens it
//!
//! A connection carries exactly one bidirectional QUIC stream. **The dialler opens it and must
//! write first** (its `Hello`): QUIC announces a stream to the other side only once data is
//! sent on it, so the acceptor's [`Transport::accept`] yields the connection only when the
//! dialler's first bytes arrive. The engine sends `Hello` on `Connected` on both sides, so
//! this holds without extra care. A dialler that completes the handshake but sends nothing
//! within [`HANDSHAKE_TIMEOUT`] is dropped.
//!
//! # Accepting
//!
//! A background task takes incoming connections, runs their handshakes concurrently (at most
//! [`MAX_PENDING_HANDSHAKES`] at a time; beyond that new ones are refused) and queues the
//! finished ones for [`Transport::accept`], so one slow or silent peer never holds up the
//! next. Connections with another ALPN, or that fail the TLS handshake, are refused and only
//! logged: they never reach the caller.
//!
//! # Errors and closing
//!
//! A frame that is oversized or does not decode makes [`FrameReader::next`] return an error
//! *and close that connection* (the stream is out of step; the peer sees the reason). Nothing
//! else is affected. Dropping both halves of a connection closes it; [`FrameWriter::finish`]
//! ends it gracefully. Always [`Transport::close`] the transport: it tells peers the
//! connections are gone instead of letting them time out.

use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use crdt_model::DeviceId;
use iroh::endpoint::{
    Connection, ConnectionError, Incoming, NetReportConfig, PortmapperConfig, QuicTransportConfig,
    ReadError, RecvStream, SendStream, WriteError, presets,
};
use iroh::{
    Endpoint, EndpointAddr, RelayConfig, RelayMap, RelayMode, RelayUrl, SecretKey, TransportAddr,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, debug_span};

use crate::sync::protocol::{ALPN, Frame, FrameDecoder, FrameError, MAX_FRAME};

/// The default log filter of Flyt's binaries: warnings and errors, but not iroh 1.4's relay
/// transport's "relay_recv_channel closed", which it logs as an error on every clean close
/// (iroh#3749). `RUST_LOG` replaces it.
pub const QUIET_LOGS: &str = "warn,iroh::socket::transports::relay=off";

/// What a bind error names when there was no address (a relay-only endpoint).
const LOOPBACK_ANY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// How long an incoming connection may take from its first packet to the dialler's first
/// bytes on the stream (QUIC handshake included).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many incoming connections are in their handshake at once; more are refused
/// (the dialler sees the refusal and may retry).
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// How long [`FrameWriter::finish`] waits for the peer to acknowledge the last bytes.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Transport::bind`] keeps retrying an explicit address that is still in use.
pub const REBIND_GRACE: Duration = Duration::from_secs(2);

/// The mDNS service name Flyt nodes announce themselves under (`_flyt._udp.local`), so
/// `--lan` finds Flyt nodes, not every iroh application on the network.
pub const LAN_SERVICE: &str = "flyt";

/// Connections that completed their handshake, waiting for [`Transport::accept`].
const ACCEPT_QUEUE: usize = 64;

/// Bytes asked from QUIC per read; the reader buffers at most one frame plus one read.
const READ_CHUNK: usize = 64 * 1024;

/// Application close codes sent to the peer.
mod code {
    /// The peer sent an oversized or malformed frame.
    pub const FRAME: u32 = 2;
    /// Closed by the application ([`super::FrameReader::close`] and friends).
    pub const APP: u32 = 3;
}

/// Transport failures. Each names the peer when there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The endpoint could not be created on that address.
    #[error("could not bind the iroh endpoint on {addr}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// What iroh said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// LAN discovery (mDNS) could not start, e.g. no interface allows multicast.
    #[error("could not start LAN discovery (mDNS)")]
    Lan(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The endpoint is closed.
    #[error("the endpoint is closed")]
    EndpointClosed,
    /// A peer id is not a valid ed25519 public key.
    #[error("{0} is not a valid device key")]
    BadPeerId(DeviceId),
    /// A relay URL is not an `http://` or `https://` URL.
    #[error("{url:?} is not a relay URL (expected http://host:port or https://host)")]
    BadRelayUrl {
        /// What was given.
        url: String,
    },
    /// A dial did not complete in time (a dead address otherwise takes ~30 s).
    #[error("timed out dialling {peer} after {after:?}")]
    DialTimeout {
        /// Who.
        peer: DeviceId,
        /// The timeout given.
        after: Duration,
    },
    /// A dial failed (unreachable, refused, wrong key, no address...).
    #[error("could not dial {peer}")]
    Dial {
        /// Who.
        peer: DeviceId,
        /// What iroh said.
        #[source]
        source: Box<iroh::endpoint::ConnectError>,
    },
    /// A peer completed the handshake but opened no stream in time.
    #[error("{peer} connected but sent nothing within {after:?}")]
    Silent {
        /// Who.
        peer: DeviceId,
        /// [`HANDSHAKE_TIMEOUT`].
        after: Duration,
    },
    /// The connection ended (closed by either side, reset, timed out).
    #[error("connection with {peer} closed: {reason}")]
    Closed {
        /// Who.
        peer: DeviceId,
        /// Why, as QUIC reports it (e.g. the peer's close reason).
        reason: String,
    },
    /// The peer abandoned or refused the stream.
    #[error("stream with {peer} {what} (code {code})")]
    Stream {
        /// Who.
        peer: DeviceId,
        /// `"reset by peer"` or `"stopped by peer"`.
        what: &'static str,
        /// The peer's error code.
        code: u64,
    },
    /// The peer sent bytes that are not a frame; the connection has been closed.
    #[error("frame from {peer}: {source}")]
    Frame {
        /// Who.
        peer: DeviceId,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// A frame we were asked to send is over [`MAX_FRAME`]; nothing was sent.
    #[error("frame to {peer}: {source}")]
    FrameTooLarge {
        /// Who.
        peer: DeviceId,
        /// The size.
        #[source]
        source: FrameError,
    },
    /// The peer ended its stream in the middle of a frame.
    #[error("stream from {peer} ended inside a frame ({buffered} bytes pending)")]
    Truncated {
        /// Who.
        peer: DeviceId,
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
}

impl NetError {
    /// Whether binding failed because the address is in use.
    fn is_addr_in_use(&self) -> bool {
        let NetError::Bind { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// Where to reach a node: its device id (the iroh endpoint id), direct addresses, and relays
/// it may be reached through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The device, i.e. the ed25519 key the endpoint authenticates with.
    pub id: DeviceId,
    /// UDP addresses the endpoint listens on.
    pub addrs: Vec<SocketAddr>,
    /// `flyt-relay` base URLs (`http://host:port`) whose `/relay` may carry the connection.
    #[serde(default)]
    pub relays: Vec<String>,
}

impl PeerAddr {
    /// A peer from the address strings tickets and the database carry: `ip:port` entries are
    /// direct addresses, `http(s)://` entries relays; anything else is skipped (a newer node's
    /// kind of address).
    pub fn parse(id: DeviceId, addrs: &[String]) -> PeerAddr {
        let mut p = PeerAddr {
            id,
            addrs: Vec::new(),
            relays: Vec::new(),
        };
        for a in addrs {
            if let Ok(ip) = a.parse() {
                p.addrs.push(ip);
            } else if relay_url(a).is_ok() {
                p.relays.push(a.clone());
            }
        }
        p
    }

    fn to_iroh(&self, relays: &[RelayUrl]) -> Result<EndpointAddr, NetError> {
        let key =
            iroh::PublicKey::from_bytes(&self.id.0).map_err(|_| NetError::BadPeerId(self.id))?;
        Ok(EndpointAddr::from_parts(
            key,
            self.addrs
                .iter()
                .copied()
                .map(TransportAddr::Ip)
                .chain(relays.iter().cloned().map(TransportAddr::Relay)),
        ))
    }
}

/// A `flyt-relay` base URL as iroh's relay client wants it (it dials `/relay` on it).
pub fn relay_url(url: &str) -> Result<RelayUrl, NetError> {
    let bad = || NetError::BadRelayUrl { url: url.into() };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad());
    }
    url.parse::<RelayUrl>().map_err(|_| bad())
}

fn device_id(id: iroh::EndpointId) -> DeviceId {
    DeviceId(*id.as_bytes())
}

/// A node's network face: one iroh endpoint speaking the Flyt ALPN.
///
/// Shareable (`Arc<Transport>`): accept in one task, dial from others.
#[derive(Debug)]
pub struct Transport {
    endpoint: Endpoint,
    id: DeviceId,
    /// Whether the endpoint has iroh's relay transport ([`Transport::bind_relaying`]).
    relaying: bool,
    /// Relays added with [`Transport::add_relay`], offered on every dial.
    relays: StdMutex<Vec<RelayUrl>>,
    incoming: Mutex<mpsc::Receiver<Result<Conn, NetError>>>,
    cancel: CancellationToken,
    accept_task: StdMutex<Option<AbortOnDropHandle<()>>>,
}

impl Transport {
    /// Binds an endpoint whose key is this device's ed25519 secret: the endpoint id equals the
    /// device's [`DeviceId`]. `bind` is the one UDP address to listen on (e.g. `127.0.0.1:0`,
    /// or `0.0.0.0:0` for every interface). No address lookup, no port mapping, and no relay
    /// until [`Transport::add_relay`].
    ///
    /// An explicit address (port not 0) that is in use is retried for up to [`REBIND_GRACE`]:
    /// iroh lets go of a closed endpoint's socket from its background tasks, a moment after
    /// [`Transport::close`] returns, so a node restarting on its own address in the same process
    /// can find it still taken.
    pub async fn bind(device_secret: [u8; 32], bind: SocketAddr) -> Result<Transport, NetError> {
        Self::bind_retrying(device_secret, bind, false).await
    }

    /// [`Transport::bind`], with iroh's relay transport and `relays` (`flyt-relay` base URLs)
    /// in its map: the endpoint is reachable through them and can use more
    /// ([`Transport::add_relay`]), also when `relays` is empty (a node: its workspaces may list
    /// a relay later). iroh 1.4's relay transport logs an error when such an endpoint closes
    /// (iroh#3749); Flyt's binaries filter it out ([`QUIET_LOGS`]).
    pub async fn bind_relaying(
        device_secret: [u8; 32],
        bind: SocketAddr,
        relays: &[String],
    ) -> Result<Transport, NetError> {
        let t = Self::bind_retrying(device_secret, bind, true).await?;
        for r in relays {
            t.add_relay(r, None).await?;
        }
        Ok(t)
    }

    async fn bind_retrying(
        device_secret: [u8; 32],
        bind: SocketAddr,
        relaying: bool,
    ) -> Result<Transport, NetError> {
        let deadline = tokio::time::Instant::now() + REBIND_GRACE;
        let mut pause = Duration::from_millis(1);
        loop {
            match Self::bind_once(device_secret, Some(bind), relaying).await {
                Err(e)
                    if bind.port() != 0
                        && e.is_addr_in_use()
                        && tokio::time::Instant::now() < deadline =>
                {
                    debug!(%bind, "address still in use, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// An endpoint with no UDP socket of its own: it reaches peers, and is reached, only through
    /// relays ([`Transport::add_relay`]). What a node behind a NAT that drops all unsolicited
    /// traffic amounts to; the tests use it to prove the relay path works with no direct one.
    pub async fn bind_relay_only(device_secret: [u8; 32]) -> Result<Transport, NetError> {
        Self::bind_once(device_secret, None, true).await
    }

    async fn bind_once(
        device_secret: [u8; 32],
        bind: Option<SocketAddr>,
        relaying: bool,
    ) -> Result<Transport, NetError> {
        let bind_err = |e: Box<dyn std::error::Error + Send + Sync>| NetError::Bind {
            addr: bind.unwrap_or(LOOPBACK_ANY),
            source: e,
        };
        // Relaying: a relay transport with an empty map; relays come from the workspaces.
        let builder = Endpoint::builder(presets::Minimal)
            .relay_mode(if relaying {
                RelayMode::Custom(RelayMap::empty())
            } else {
                RelayMode::Disabled
            })
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled)
            // Latency probes (`GET /ping`) go only to the relays in the map, which are our
            // workspaces' own: they pick the home relay. No captive-portal check (that would
            // reach out to the internet).
            .net_report_config({
                let mut c = NetReportConfig::minimal();
                c.https_probes = true;
                c
            })
            .secret_key(SecretKey::from_bytes(&device_secret))
            .alpns(vec![ALPN.to_vec()])
            // The one stream is all a peer may open: further streams would only hold memory.
            .transport_config(
                QuicTransportConfig::builder()
                    .max_concurrent_bidi_streams(1u32.into())
                    .max_concurrent_uni_streams(0u32.into())
                    .build(),
            )
            .clear_ip_transports();
        let builder = match bind {
            Some(bind) => builder.bind_addr(bind).map_err(|e| bind_err(Box::new(e)))?,
            None => builder,
        };
        let endpoint = builder.bind().await.map_err(|e| bind_err(Box::new(e)))?;
        let id = device_id(endpoint.id());
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            accept_loop(endpoint.clone(), tx, cancel.clone())
                .instrument(debug_span!("flyt.accept", me = %id)),
        );
        debug!(me = %id, addrs = ?endpoint.bound_sockets(), "transport bound");
        Ok(Transport {
            endpoint,
            id,
            relaying,
            relays: StdMutex::new(Vec::new()),
            incoming: Mutex::new(rx),
            cancel,
            accept_task: StdMutex::new(Some(AbortOnDropHandle::new(task))),
        })
    }

    /// This device's id (the endpoint id).
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// This endpoint's id and direct addresses (with an unspecified bind address, one per
    /// local interface).
    pub fn addr(&self) -> PeerAddr {
        let mut addrs: Vec<SocketAddr> = self.endpoint.addr().ip_addrs().copied().collect();
        if addrs.is_empty() {
            addrs = self
                .endpoint
                .bound_sockets()
                .into_iter()
                .filter(|a| !a.ip().is_unspecified())
                .collect();
        }
        let relays = self
            .relays
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|u| u.to_string().trim_end_matches('/').to_string())
            .collect();
        PeerAddr {
            id: self.id,
            addrs,
            relays,
        }
    }

    /// Adds a `flyt-relay` (its base URL, `http://host:port`): the endpoint keeps a connection
    /// to it (its home relay) so peers can reach it there, and every dial offers it. `token`
    /// goes to the relay as its bearer token (a joiner's invite ticket: the relay admits only
    /// members' devices, and devices holding a valid invite). Adding a relay again replaces its
    /// token. Returns whether it was new; always `false` on an endpoint bound without relaying
    /// (it takes effect when the node next starts).
    pub async fn add_relay(&self, url: &str, token: Option<String>) -> Result<bool, NetError> {
        let url = relay_url(url)?;
        if !self.relaying {
            debug!(%url, "not relaying: the relay is used from the next start");
            return Ok(false);
        }
        let new = {
            let mut relays = self.relays.lock().expect("not poisoned");
            let new = !relays.contains(&url);
            if new {
                relays.push(url.clone());
            }
            new
        };
        let mut config = RelayConfig::new(url.clone(), None);
        config.auth_token = token;
        if new || config.auth_token.is_some() {
            self.endpoint.insert_relay(url, config.into()).await;
        }
        Ok(new)
    }

    /// Turns on LAN discovery (`flyt serve --lan`): the endpoint announces its id and direct
    /// addresses on the local network by mDNS (service `_flyt._udp.local`) and finds other
    /// Flyt nodes doing the same, through n0's `iroh-mdns-address-lookup`. From then on a dial
    /// also looks the peer's current addresses up there. Returns the nodes found, as they are
    /// found (again when their addresses change); who they are is for the caller to judge: a
    /// found node is only a claim of an id, proved by the handshake of a dial.
    pub async fn enable_lan(
        &self,
    ) -> Result<impl futures_util::Stream<Item = PeerAddr> + Unpin + use<>, NetError> {
        use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
        let mdns = MdnsAddressLookup::builder()
            .service_name(LAN_SERVICE)
            .build(self.endpoint.id())
            .map_err(|e| NetError::Lan(Box::new(e)))?;
        self.endpoint
            .address_lookup()
            .map_err(|_| NetError::EndpointClosed)?
            .add(mdns.clone());
        let found = mdns.subscribe().await;
        // The endpoint holds the lookup (and so its mDNS task) from here on.
        Ok(futures_util::StreamExt::filter_map(found, |ev| {
            std::future::ready(match ev {
                DiscoveryEvent::Discovered { endpoint_info, .. } => Some(PeerAddr {
                    id: device_id(endpoint_info.endpoint_id),
                    addrs: endpoint_info.ip_addrs().copied().collect(),
                    relays: Vec::new(),
                }),
                _ => None,
            })
        }))
    }

    /// Stops using a relay (the workspace removed it).
    pub async fn remove_relay(&self, url: &str) {
        let Ok(url) = relay_url(url) else { return };
        self.relays
            .lock()
            .expect("not poisoned")
            .retain(|u| *u != url);
        self.endpoint.remove_relay(&url).await;
    }

    /// The next incoming connection that completed the handshake with our ALPN and opened its
    /// stream, or `None` once the transport is closed. An `Err` concerns one authenticated
    /// peer's connection only (e.g. it sent nothing in time): log it and call again.
    /// Connections with another ALPN or a failed handshake are refused without reaching here.
    pub async fn accept(&self) -> Option<Result<Conn, NetError>> {
        self.incoming.lock().await.recv().await
    }

    /// Dials a peer on the direct addresses in `to`, bounded by `timeout`. The returned
    /// connection's stream is opened but not yet announced: send the first frame at once (see
    /// the module docs).
    pub async fn dial(&self, to: &PeerAddr, timeout: Duration) -> Result<Conn, NetError> {
        let peer = to.id;
        for r in &to.relays {
            if let Err(e) = self.add_relay(r, None).await {
                debug!(remote = %peer, "skipping a relay: {e}");
            }
        }
        let relays = self.relays.lock().expect("not poisoned").clone();
        let addr = to.to_iroh(&relays)?;
        if self.endpoint.is_closed() {
            return Err(NetError::EndpointClosed);
        }
        let attempt = async {
            let conn = self
                .endpoint
                .connect(addr, ALPN)
                .await
                .map_err(|e| NetError::Dial {
                    peer,
                    source: Box::new(e),
                })?;
            let (send, recv) = conn.open_bi().await.map_err(|e| closed(peer, &e))?;
            Ok(Conn::new(peer, conn, send, recv))
        };
        let conn =
            tokio::time::timeout(timeout, attempt)
                .await
                .map_err(|_| NetError::DialTimeout {
                    peer,
                    after: timeout,
                })??;
        debug!(me = %self.id, remote = %peer, "dialled");
        Ok(conn)
    }

    /// Closes the endpoint: stops accepting, closes every connection (peers are told), and
    /// waits (a few seconds at most) for peers to acknowledge. Afterwards `accept` returns
    /// `None` and `dial` fails. Always call it before dropping the transport.
    pub async fn close(&self) {
        self.cancel.cancel();
        let task = self.accept_task.lock().expect("not poisoned").take();
        if let Some(task) = task {
            // The loop exits at once on cancel; it only drops its pending handshakes.
            let _ = task.await;
        }
        self.endpoint.close().await;
        debug!(me = %self.id, "transport closed");
    }
}

/// Takes incoming connections and runs each handshake in its own task, so a slow one never
/// delays the next; finished connections go to `tx`.
async fn accept_loop(
    endpoint: Endpoint,
    tx: mpsc::Sender<Result<Conn, NetError>>,
    cancel: CancellationToken,
) {
    let mut pending: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = pending.join_next() => {}
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if pending.len() >= MAX_PENDING_HANDSHAKES {
                    debug!(remote = ?incoming.remote_addr(), "too many pending handshakes: refused");
                    incoming.refuse();
                    continue;
                }
                let tx = tx.clone();
                let span = debug_span!("flyt.incoming", remote = tracing::field::Empty);
                pending.spawn(
                    async move {
                        if let Some(r) = handshake(incoming).await {
                            // Fails only if the transport is gone; the connection is dropped.
                            let _ = tx.send(r).await;
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }
    // Dropping `pending` aborts the handshakes still running.
}

/// One incoming connection up to its first stream. `None`: refused before we knew who it was
/// (not the caller's business).
async fn handshake(incoming: Incoming) -> Option<Result<Conn, NetError>> {
    let remote_addr = incoming.remote_addr();
    let conn = async {
        let accepting = incoming
            .accept()
            .map_err(|e| debug!(?remote_addr, "incoming refused: {e}"))
            .ok()?;
        accepting
            .await
            .map_err(|e| debug!(?remote_addr, "handshake failed: {e}"))
            .ok()
    };
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await {
        Ok(Some(conn)) => conn,
        Ok(None) => return None,
        Err(_) => {
            debug!(?remote_addr, "handshake timed out");
            return None;
        }
    };
    // Only our ALPN is configured, so a completed handshake negotiated it; checked anyway.
    if conn.alpn() != ALPN {
        conn.close(code::APP.into(), b"unsupported protocol");
        return None;
    }
    let peer = device_id(conn.remote_id());
    tracing::Span::current().record("remote", tracing::field::display(peer));
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await;
    Some(match stream {
        Ok(Ok((send, recv))) => {
            debug!(%peer, "accepted");
            Ok(Conn::new(peer, conn, send, recv))
        }
        Ok(Err(e)) => Err(closed(peer, &e)),
        Err(_) => {
            conn.close(code::APP.into(), b"no stream opened in time");
            Err(NetError::Silent {
                peer,
                after: HANDSHAKE_TIMEOUT,
            })
        }
    })
}

fn closed(peer: DeviceId, e: &ConnectionError) -> NetError {
    let reason = match e {
        ConnectionError::LocallyClosed => "closed locally".to_owned(),
        e => e.to_string(),
    };
    NetError::Closed { peer, reason }
}

/// An established connection: the authenticated remote device and one bidirectional stream
/// carrying [`Frame`]s.
#[derive(Debug)]
pub struct Conn {
    /// The remote device, authenticated by the QUIC handshake (its endpoint key).
    pub remote: DeviceId,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Conn {
    fn new(remote: DeviceId, conn: Connection, send: SendStream, recv: RecvStream) -> Self {
        Conn {
            remote,
            conn,
            send,
            recv,
        }
    }

    /// Splits into a frame reader and a frame writer, usable from two tasks. The connection
    /// lives until both are dropped (or one of them closes it).
    pub fn split(self) -> (FrameReader, FrameWriter) {
        (
            FrameReader {
                remote: self.remote,
                conn: self.conn.clone(),
                recv: self.recv,
                decoder: FrameDecoder::default(),
                done: false,
                broken: false,
            },
            FrameWriter {
                remote: self.remote,
                conn: self.conn,
                send: self.send,
            },
        )
    }
}

/// The receiving half of a [`Conn`].
#[derive(Debug)]
pub struct FrameReader {
    remote: DeviceId,
    conn: Connection,
    recv: RecvStream,
    decoder: FrameDecoder,
    /// The peer finished its stream.
    done: bool,
    /// A frame error closed the connection: nothing after it is trusted.
    broken: bool,
}

impl FrameReader {
    /// The remote device.
    pub fn remote(&self) -> DeviceId {
        self.remote
    }

    /// The next frame; `Ok(None)` once the peer finished its stream cleanly. Buffers at most
    /// one frame ([`MAX_FRAME`]) plus one read. An oversized or malformed frame closes the
    /// connection (the peer is told why) and returns [`NetError::Frame`]. Cancel-safe: usable
    /// in `select!`.
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        if self.broken {
            return Err(NetError::Closed {
                peer: self.remote,
                reason: "closed after a frame error".to_owned(),
            });
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(source) => {
                    let reason = format!("frame error: {source}");
                    self.conn.close(code::FRAME.into(), reason.as_bytes());
                    self.broken = true;
                    return Err(NetError::Frame {
                        peer: self.remote,
                        source,
                    });
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.recv.read_chunk(READ_CHUNK).await {
                Ok(Some(bytes)) => self.decoder.push(&bytes),
                Ok(None) => {
                    self.done = true;
                    let buffered = self.decoder.buffered();
                    if buffered > 0 {
                        return Err(NetError::Truncated {
                            peer: self.remote,
                            buffered,
                        });
                    }
                    return Ok(None);
                }
                Err(e) => return Err(read_error(self.remote, e)),
            }
        }
    }

    /// Closes the whole connection at once (both halves); the peer sees `reason`.
    pub fn close(&self, reason: &str) {
        self.conn.close(code::APP.into(), reason.as_bytes());
    }
}

fn read_error(peer: DeviceId, e: ReadError) -> NetError {
    match e {
        ReadError::Reset(code) => NetError::Stream {
            peer,
            what: "reset by peer",
            code: code.into_inner(),
        },
        ReadError::ConnectionLost(e) => closed(peer, &e),
        e => NetError::Closed {
            peer,
            reason: e.to_string(),
        },
    }
}

fn write_error(peer: DeviceId, e: WriteError) -> NetError {
    match e {
        WriteError::Stopped(code) => NetError::Stream {
            peer,
            what: "stopped by peer",
            code: code.into_inner(),
        },
        WriteError::ConnectionLost(e) => closed(peer, &e),
        e => NetError::Closed {
            peer,
            reason: e.to_string(),
        },
    }
}

/// The sending half of a [`Conn`].
#[derive(Debug)]
pub struct FrameWriter {
    remote: DeviceId,
    conn: Connection,
    send: SendStream,
}

impl FrameWriter {
    /// The remote device.
    pub fn remote(&self) -> DeviceId {
        self.remote
    }

    /// Sends one frame (length prefix + postcard). Waits while the peer's flow control is
    /// full. A frame over [`MAX_FRAME`] is refused before anything is written. Not
    /// cancel-safe: a cancelled send may leave half a frame, so close the connection then.
    pub async fn send(&mut self, f: &Frame) -> Result<(), NetError> {
        let bytes = f.encode();
        let body = bytes.len() - 4;
        if body > MAX_FRAME {
            return Err(NetError::FrameTooLarge {
                peer: self.remote,
                source: FrameError::TooLarge(body),
            });
        }
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| write_error(self.remote, e))
    }

    /// Ends our side of the stream and waits (at most [`FINISH_TIMEOUT`]) until the peer has
    /// received everything sent; the peer's reader then returns `Ok(None)`. The connection
    /// stays open until the peer finishes too or either side drops it.
    pub async fn finish(mut self) {
        if self.send.finish().is_err() {
            return;
        }
        match tokio::time::timeout(FINISH_TIMEOUT, self.send.stopped()).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(code))) => debug!(remote = %self.remote, %code, "peer stopped reading"),
            Ok(Err(e)) => debug!(remote = %self.remote, "finish: {e}"),
            Err(_) => debug!(remote = %self.remote, "finish: peer did not acknowledge in time"),
        }
    }

    /// Closes the whole connection at once (both halves; unsent data is dropped); the peer
    /// sees `reason`.
    pub fn close(&self, reason: &str) {
        self.conn.close(code::APP.into(), reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Instant;

    use crdt_model::{DocId, Identity};

    use super::*;
    use crate::sync::protocol::PROTOCOL_VERSION;

    /// Every test finishes well within this or fails.
    const LIMIT: Duration = Duration::from_secs(30);
    const DIAL: Duration = Duration::from_secs(5);
    const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    fn secret(n: u8) -> [u8; 32] {
        let mut s = [n; 32];
        s[0] = 0xf1;
        s
    }

    /// The device id crdt-model derives from a secret (independently of iroh).
    fn device(secret: [u8; 32]) -> DeviceId {
        Identity::from_secrets([0; 32], secret, "t").device_id()
    }

    fn hello() -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            have: vec![],
        }
    }

    async fn bind(n: u8) -> Transport {
        Transport::bind(secret(n), LOOPBACK).await.unwrap()
    }

    /// `a` dials `b` and says hello; returns both ends.
    async fn connect(a: &Transport, b: &Transport) -> ((FrameReader, FrameWriter), Conn) {
        let conn = a.dial(&b.addr(), DIAL).await.unwrap();
        let (ra, mut wa) = conn.split();
        wa.send(&hello()).await.unwrap();
        let conn_b = b.accept().await.unwrap().unwrap();
        ((ra, wa), conn_b)
    }

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(LIMIT, f)
            .await
            .expect("test timed out")
    }

    #[tokio::test]
    async fn two_nodes_authenticate_and_exchange_frames_both_ways() {
        bounded(async {
            let (a, b) = (bind(1).await, bind(2).await);
            assert_eq!(a.id(), device(secret(1)));
            assert_eq!(b.addr().id, device(secret(2)));
            assert!(b.addr().addrs.iter().all(|s| s.ip().is_loopback()));

            let conn = a.dial(&b.addr(), DIAL).await.unwrap();
            assert_eq!(conn.remote, device(secret(2)));
            let (mut ra, mut wa) = conn.split();
            wa.send(&hello()).await.unwrap();
            let conn = b.accept().await.unwrap().unwrap();
            assert_eq!(conn.remote, device(secret(1)));
            let (mut rb, mut wb) = conn.split();
            assert_eq!(rb.next().await.unwrap(), Some(hello()));
            wb.send(&hello()).await.unwrap();
            assert_eq!(ra.next().await.unwrap(), Some(hello()));

            let big = Frame::Sync {
                doc: DocId([7; 16]),
                data: (0..1024 * 1024).map(|i| (i % 251) as u8).collect(),
            };
            let (sent, got) = tokio::join!(wa.send(&big), rb.next());
            sent.unwrap();
            assert_eq!(got.unwrap().as_ref(), Some(&big));
            let (sent, got) = tokio::join!(wb.send(&big), ra.next());
            sent.unwrap();
            assert_eq!(got.unwrap().as_ref(), Some(&big));

            // A clean finish is a clean end of frames on the other side.
            let ((), end) = tokio::join!(wa.finish(), rb.next());
            assert_eq!(end.unwrap(), None);

            a.close().await;
            b.close().await;
            assert!(a.accept().await.is_none());
            assert!(matches!(
                a.dial(&b.addr(), DIAL).await,
                Err(NetError::EndpointClosed)
            ));
        })
        .await
    }

    #[tokio::test]
    async fn dialling_a_dead_endpoint_fails_within_the_timeout() {
        bounded(async {
            let a = bind(1).await;
            let dead = bind(3).await;
            let addr = dead.addr();
            dead.close().await;
            drop(dead);

            let timeout = Duration::from_secs(2);
            let start = Instant::now();
            let err = a.dial(&addr, timeout).await.unwrap_err();
            let took = start.elapsed();
            assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
            match &err {
                NetError::DialTimeout { peer, after } => {
                    assert_eq!((*peer, *after), (addr.id, timeout));
                    assert_eq!(
                        err.to_string(),
                        format!("timed out dialling {} after 2s", addr.id)
                    );
                }
                NetError::Dial { peer, .. } => assert_eq!(*peer, addr.id),
                e => panic!("unexpected error: {e}"),
            }
            // (Takes ~3 s: the abandoned attempt drains first.)
            a.close().await;
        })
        .await
    }

    #[tokio::test]
    async fn garbage_closes_that_connection_only() {
        bounded(async {
            let (a, b) = (bind(1).await, bind(2).await);

            // A length prefix over MAX_FRAME.
            let conn = a.dial(&b.addr(), DIAL).await.unwrap();
            let (mut ra, mut wa) = conn.split();
            wa.send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            let (mut rb, _wb) = b.accept().await.unwrap().unwrap().split();
            match rb.next().await {
                Err(NetError::Frame {
                    peer,
                    source: FrameError::TooLarge(n),
                }) => assert_eq!((peer, n), (a.id(), u32::MAX as usize)),
                r => panic!("expected a frame error, got {r:?}"),
            }
            // The dialler learns why.
            match ra.next().await {
                Err(NetError::Closed { reason, .. }) => {
                    assert!(reason.contains("frame error"), "{reason}")
                }
                r => panic!("expected the connection closed, got {r:?}"),
            }

            // A well-sized frame whose body is not a frame (no variant 7).
            let conn = a.dial(&b.addr(), DIAL).await.unwrap();
            let (_ra, mut wa) = conn.split();
            wa.send.write_all(&[0, 0, 0, 3, 7, 0, 0]).await.unwrap();
            let (mut rb, _wb) = b.accept().await.unwrap().unwrap().split();
            assert!(matches!(
                rb.next().await,
                Err(NetError::Frame {
                    source: FrameError::Malformed,
                    ..
                })
            ));
            assert!(matches!(rb.next().await, Err(NetError::Closed { .. })));

            // A fresh connection works.
            let ((mut ra, _wa), conn) = connect(&a, &b).await;
            let (mut rb, mut wb) = conn.split();
            assert_eq!(rb.next().await.unwrap(), Some(hello()));
            wb.send(&hello()).await.unwrap();
            assert_eq!(ra.next().await.unwrap(), Some(hello()));

            a.close().await;
            b.close().await;
        })
        .await
    }

    #[tokio::test]
    async fn another_alpn_is_refused_and_accept_keeps_serving() {
        bounded(async {
            let (a, b) = (bind(1).await, bind(2).await);
            let raw = Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Disabled)
                .clear_ip_transports()
                .bind_addr(LOOPBACK)
                .unwrap()
                .bind()
                .await
                .unwrap();
            let to = b.addr().to_iroh(&[]).unwrap();
            assert!(raw.connect(to, b"not-flyt/1").await.is_err());

            // The refused connection never reached `accept`: the next one is `a`'s.
            let ((_ra, _wa), conn) = connect(&a, &b).await;
            assert_eq!(conn.remote, a.id());

            raw.close().await;
            a.close().await;
            b.close().await;
        })
        .await
    }

    #[tokio::test]
    async fn a_silent_dialler_does_not_hold_up_the_next() {
        bounded(async {
            let (a, b) = (bind(1).await, bind(2).await);
            let silent = bind(4).await;
            // Handshake done, stream opened but never written: `b` cannot see it yet.
            let _quiet = silent.dial(&b.addr(), DIAL).await.unwrap();

            let start = Instant::now();
            let ((_ra, _wa), conn) = connect(&a, &b).await;
            assert_eq!(conn.remote, a.id());
            assert!(start.elapsed() < HANDSHAKE_TIMEOUT / 2);

            silent.close().await;
            a.close().await;
            b.close().await;
        })
        .await
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_sending() {
        bounded(async {
            let (a, b) = (bind(1).await, bind(2).await);
            let ((_ra, mut wa), _conn) = connect(&a, &b).await;
            let huge = Frame::Sync {
                doc: DocId([1; 16]),
                data: vec![0; MAX_FRAME],
            };
            assert!(matches!(
                wa.send(&huge).await,
                Err(NetError::FrameTooLarge { .. })
            ));
            a.close().await;
            b.close().await;
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_transport_can_be_bound_again_on_its_address() {
        bounded(async {
            let mut t = bind(1).await;
            let addr = t.addr().addrs[0];
            // iroh frees the socket a moment after `close`: a restart must not fail on it.
            for _ in 0..50 {
                t.close().await;
                drop(t);
                t = Transport::bind(secret(1), addr).await.unwrap();
                assert_eq!(t.addr().addrs, vec![addr]);
            }
            t.close().await;
        })
        .await
    }

    #[test]
    fn address_strings_split_into_direct_addresses_and_relays() {
        let id = device(secret(9));
        let p = PeerAddr::parse(
            id,
            &[
                "127.0.0.1:4433".into(),
                "http://relay.example:8787".into(),
                "https://relay.example".into(),
                "ftp://nope".into(),
                "not an address".into(),
            ],
        );
        assert_eq!(p.addrs, vec!["127.0.0.1:4433".parse().unwrap()]);
        assert_eq!(
            p.relays,
            vec!["http://relay.example:8787", "https://relay.example"]
        );
        assert!(matches!(
            relay_url("relay.example:8787"),
            Err(NetError::BadRelayUrl { .. })
        ));
    }

    #[test]
    fn peer_addrs_round_trip_through_serde() {
        let p = PeerAddr {
            id: device(secret(9)),
            addrs: vec![
                "127.0.0.1:4433".parse().unwrap(),
                "[::1]:9".parse().unwrap(),
            ],
            relays: vec!["http://127.0.0.1:8787".into()],
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PeerAddr>(&json).unwrap(), p);
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<PeerAddr>(&bytes).unwrap(), p);
    }
}
