//! The relay's integration tests: routes (in process and over real sockets) and sync over real
//! iroh connections on 127.0.0.1.

mod app_api;
mod archive;
mod common;
mod ephemeral;
mod http;
mod nat;
mod sync;
