//! The relay's counters and their Prometheus text rendering (`GET /metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges, updated lock-free by connection tasks and the store thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sync connections open now (iroh and WebSocket).
    pub connections: AtomicU64,
    /// Sync connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections closed because their device may not connect (not a member).
    pub refused_peers: AtomicU64,
    /// Connections closed for exceeding the per-connection rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed because they did not read what we sent fast enough.
    pub slow_peers: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub over_capacity: AtomicU64,
    /// Frames received from peers.
    pub frames_received: AtomicU64,
    /// Frames refused: malformed, oversized, or an unknown protocol version.
    pub frames_refused: AtomicU64,
    /// Automerge sync payload bytes received.
    pub bytes_received: AtomicU64,
    /// Automerge sync payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Documents held.
    pub documents: AtomicU64,
    /// Workspaces served.
    pub workspaces: AtomicU64,
    /// Document changes committed (each is one transaction's worth for one document).
    pub doc_changes: AtomicU64,
    /// Workspace documents taken by `POST /join`.
    pub joins: AtomicU64,
    /// Sync events that failed in storage (rolled back).
    pub store_errors: AtomicU64,
    /// Ephemeral notes (typing, presence) handed to members' sessions: one per recipient.
    pub ephemeral_forwarded: AtomicU64,
    /// Ephemeral notes refused: badly signed, not from their signer, not a member's, stale,
    /// or typing in a channel that is not public.
    pub ephemeral_refused: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 17] = [
            (
                "flyt_relay_connections",
                "gauge",
                "Sync connections open now.",
                &self.connections,
            ),
            (
                "flyt_relay_connections_total",
                "counter",
                "Sync connections accepted.",
                &self.connections_total,
            ),
            (
                "flyt_relay_refused_peers_total",
                "counter",
                "Connections closed: not a member of a served workspace.",
                &self.refused_peers,
            ),
            (
                "flyt_relay_rate_limited_total",
                "counter",
                "Connections closed for exceeding the rate limit.",
                &self.rate_limited,
            ),
            (
                "flyt_relay_slow_peers_total",
                "counter",
                "Connections closed for not reading fast enough.",
                &self.slow_peers,
            ),
            (
                "flyt_relay_over_capacity_total",
                "counter",
                "Connections refused at max_connections.",
                &self.over_capacity,
            ),
            (
                "flyt_relay_frames_received_total",
                "counter",
                "Sync frames received.",
                &self.frames_received,
            ),
            (
                "flyt_relay_frames_refused_total",
                "counter",
                "Frames refused: malformed, oversized or unknown version.",
                &self.frames_refused,
            ),
            (
                "flyt_relay_bytes_received_total",
                "counter",
                "Automerge sync bytes received.",
                &self.bytes_received,
            ),
            (
                "flyt_relay_bytes_sent_total",
                "counter",
                "Automerge sync bytes sent.",
                &self.bytes_sent,
            ),
            (
                "flyt_relay_documents",
                "gauge",
                "Documents held.",
                &self.documents,
            ),
            (
                "flyt_relay_workspaces",
                "gauge",
                "Workspaces served.",
                &self.workspaces,
            ),
            (
                "flyt_relay_doc_changes_total",
                "counter",
                "Document changes committed.",
                &self.doc_changes,
            ),
            (
                "flyt_relay_joins_total",
                "counter",
                "Workspace documents taken by POST /join.",
                &self.joins,
            ),
            (
                "flyt_relay_store_errors_total",
                "counter",
                "Sync events that failed in storage.",
                &self.store_errors,
            ),
            (
                "flyt_relay_ephemeral_forwarded_total",
                "counter",
                "Typing and presence notes passed on (one per recipient).",
                &self.ephemeral_forwarded,
            ),
            (
                "flyt_relay_ephemeral_refused_total",
                "counter",
                "Typing and presence notes refused.",
                &self.ephemeral_refused,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}
