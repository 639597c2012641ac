//! Starting relays and talking HTTP to them.

use std::net::SocketAddr;
use std::time::Duration;

use sync_relay::config::Config;
use sync_relay::runtime::{Extensions, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait in these tests ends within this or fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A relay config on free loopback ports in `dir`.
pub fn config(dir: &std::path::Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        iroh_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_owned(),
        ..Config::default()
    }
}

/// Starts a relay with `cfg`, serving `/sync` as `flyt-relay` does (without the archive).
pub async fn start(cfg: Config) -> Relay {
    let ext = Extensions {
        archive: None,
        routes: Some(Box::new(|state| {
            sync_relay::ws::router(sync_relay::ws::WsState::for_relay(&state.relay))
        })),
    };
    Relay::start(cfg, ext).await.unwrap()
}

/// One HTTP/1.1 request over a real socket: (status, body).
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    request_with(addr, method, path, &[], body).await
}

/// [`request`] with extra headers.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
        let mut rest = out[split + 4..].to_vec();
        let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
        if head.contains("transfer-encoding: chunked") {
            rest = dechunk(&rest);
        }
        (status, rest)
    };
    tokio::time::timeout(LIMIT, go)
        .await
        .expect("request in time")
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line + 2..line + 2 + n]);
        b = &b[line + 2 + n + 2..];
    }
}
