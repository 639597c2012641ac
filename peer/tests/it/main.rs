//! Integration tests of `peer::Store` on real SQLite files: one binary, several modules.

mod api;
mod chat;
mod common;
mod concurrency;
mod converge;
mod devices;
mod ephemeral;
mod errors;
mod lan;
mod mesh;
mod node;
mod private;
mod projection;
mod prop;
mod storage;
mod sync;
