//! `app`: the Flyt desktop app (issue 5), a Tauri 2 shell around `peer`.
//!
//! What it will hold: the Tauri commands for every chat action (each a thin call into
//! `peer::Store` and the node), the event stream that batches incoming changes for the web
//! view, and the window set-up. The React front end lives in `app/ui`; its `api.ts` is the
//! only module that knows it talks to Tauri. Rust does all network and database work; the web
//! view only renders.
#![deny(missing_docs)]

pub use peer::Store;
