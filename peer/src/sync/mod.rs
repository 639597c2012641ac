//! Sync: Flyt's own engine on `automerge::sync`, sans-IO, and its wire protocol.
//!
//! [`engine::Engine`] takes events (a peer connected, a frame arrived, documents changed
//! locally, a peer left, membership changed) and returns actions (send this frame, persist this
//! change, save this sync state, close this connection). It touches documents and the share
//! policy only through [`engine::Host`], so the same engine runs inside the node (SQLite and
//! iroh around it), inside the relay, and inside deterministic multi-peer tests.

pub mod engine;
pub mod protocol;

#[cfg(test)]
mod tests;
