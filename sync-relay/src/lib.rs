//! `sync-relay`: the self-hosted, always-on Flyt peer (binary `flyt-relay`, issue 4).
//!
//! What it will hold, and what it is already bound by:
//! - an Axum HTTP face: `/info`, `/healthz`, `/readyz`, `/metrics`, the automerge-repo
//!   WebSocket framing of the sync engine at `/sync`, iroh's relay protocol at `/relay`, and
//!   the admin archive API under `/api`;
//! - an iroh endpoint speaking the Flyt ALPN: the same sync engine as `peer`, in its Flyt
//!   framing;
//! - the archive: every document it holds, in Postgres (or embedded SQLite), projected into
//!   searchable tables.
//!
//! Invariant: the relay never authors chat content. It depends on `crdt-model` and on
//! `peer`'s protocol module, never the reverse.
#![deny(missing_docs)]

/// The version this relay reports at `/info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
