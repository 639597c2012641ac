//! `sync-relay`: the self-hosted, always-on Flyt peer (binary `flyt-relay`).
//!
//! A team runs one relay so that messages reach people who are never online at the same time
//! as their senders, and peers behind NATs reach each other. It is a Flyt peer like any other,
//! with a different share policy ([`store`]): it serves only workspaces whose owner or an admin
//! added it (`flyt relay add URL`), only to the devices of their current members. It **never
//! authors chat content**: it merges, stores, forwards, archives and reports.
//!
//! ```text
//!  iroh endpoint (Flyt ALPN) ─ conn tasks ─┐
//!  WebSocket /sync (archive helper) ───────┼─ Cmd ─▶ store thread: RelayStore + Engine
//!  POST /join ─────────────────────────────┘             │ commits, then
//!                                                         ├─▶ frames to connections
//!                                                         ├─▶ Archive::changed (DocChange)
//!                                                         └─▶ Archive::sync_state_saved
//!  Axum: /info /healthz /readyz /metrics /join (+ routes merged in by the embedder)
//! ```
//!
//! # Seams for the archive, the admin API and the WebSocket framing
//!
//! - **Changed documents**: implement [`Archive`] and pass it to [`runtime::Relay::start`].
//!   [`Archive::changed`] is called on the store thread right after each transaction that
//!   changed a document committed, with a [`DocChange`] holding exactly the bytes the document
//!   gained; it must not block (queue the work). Likewise [`Archive::sync_state_saved`] gets
//!   every sync state the relay's store saves, right after the transaction that saved it
//!   committed. [`Archive::ready`] feeds `/readyz`, [`Archive::metrics`] appends to
//!   `/metrics`, [`Archive::shutdown`] is awaited last when the relay stops.
//!   [`Archive::started`] hands it the [`runtime::RelayHandle`] once the store thread runs:
//!   to catch up on what it missed (a previous run that stopped before its queue was
//!   written), it reads documents and sync states through [`runtime::RelayHandle::call`]
//!   ([`store::RelayStore::list`], [`store::RelayStore::document`],
//!   [`store::RelayStore::sync_states`]); a job run there is ordered with the live calls.
//! - **More routes**: [`runtime::Extensions::routes`] builds a `Router` from the
//!   [`http::AppState`] (`state.relay` is the [`runtime::RelayHandle`]); the relay merges it
//!   into [`http::routes`] and wraps both in [`http::layered`] (request timeout, tracing).
//! - **Another framing of the same engine** (WebSocket `/sync`): after authenticating a device,
//!   [`runtime::RelayHandle::open`] gives a [`runtime::Session`] and the receiver of the frames
//!   for the peer: feed the session the peer's frames with [`runtime::Session::frame`], send
//!   what arrives on the receiver; dropping the session ends it (its sync states are saved).
#![deny(missing_docs)]

pub mod api;
pub mod archive;
pub mod config;
pub mod http;
pub mod metrics;
pub mod nat;
pub mod runtime;
pub mod store;
pub mod ws;

use std::future::Future;
use std::pin::Pin;

use automerge::ChangeHash;
use crdt_model::{DeviceId, DocId};
use peer::docs::DocMeta;

/// The version this relay reports at `/info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A document the relay holds changed (a peer's sync message, or a workspace document taken by
/// `POST /join`). Committed to the relay's SQLite before this is reported.
#[derive(Debug, Clone)]
pub struct DocChange {
    /// The document.
    pub doc: DocId,
    /// What it is and where it belongs.
    pub meta: DocMeta,
    /// What the document gained, as Automerge bytes (an incremental save; for a document new to
    /// the relay, everything). Applying a document's chunks in order with
    /// `Automerge::load_incremental` rebuilds the relay's copy. Empty unless an [`Archive`] is
    /// attached.
    pub chunk: Vec<u8>,
    /// Its heads afterwards.
    pub heads: Vec<ChangeHash>,
}

/// What the archive implements (see the crate docs). Every method has a harmless default
/// except [`Archive::changed`].
pub trait Archive: Send + Sync + 'static {
    /// A document changed. Called on the store thread: must not block (queue it).
    fn changed(&self, change: DocChange);
    /// The relay saved its sync state with `peer` for `doc` (`automerge::sync::State::encode`
    /// bytes), committed to its SQLite: the engine saves a peer's states when its session ends
    /// (closed by either side, replaced, too slow) and every connected peer's at shutdown.
    /// Called on the store thread, in the order the states were saved, only when an archive is
    /// attached: must not block (queue it).
    fn sync_state_saved(&self, peer: DeviceId, doc: DocId, state: Vec<u8>) {
        let _ = (peer, doc, state);
    }
    /// Whether the archive can take writes now: `Err(why)` makes `/readyz` answer 503.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Appends Prometheus text-format lines (with `# HELP`/`# TYPE`) to `/metrics`.
    fn metrics(&self, out: &mut String) {
        let _ = out;
    }
    /// The relay is serving (its store thread runs): a chance to catch up on what an earlier
    /// run did not deliver, through `relay`. Must not block: spawn the work.
    fn started(&self, relay: &runtime::RelayHandle) {
        let _ = relay;
    }
    /// Flushes what is queued; awaited last when the relay stops.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
