//! The HTTP routes, in process (`app().oneshot`) and over real sockets.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sync_relay::http::{AppState, app};
use tower::ServiceExt;

use crate::common::{config, request, start};

async fn body_of(r: axum::response::Response) -> Vec<u8> {
    axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn info_health_ready_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let state = AppState {
        relay: relay.handle().clone(),
    };

    let r = app(state.clone())
        .oneshot(Request::get("/info").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let info: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
    assert_eq!(info["id"], relay.peer_addr().id.to_string());
    assert_eq!(info["version"], sync_relay::VERSION);
    let url = format!("http://{}", relay.http_addr());
    assert_eq!(info["url"], url);
    assert_eq!(info["relay_url"], format!("{url}/relay"));
    assert!(!info["addrs"].as_array().unwrap().is_empty());

    for path in ["/healthz", "/readyz"] {
        let r = app(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = app(state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(body_of(r).await).unwrap();
    assert!(
        text.contains("# TYPE flyt_relay_connections gauge"),
        "{text}"
    );
    assert!(text.contains("flyt_relay_documents 0"), "{text}");

    // The same over a real socket.
    let (status, body) = request(relay.http_addr(), "GET", "/info", b"").await;
    assert_eq!(status, 200);
    let again: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(again, info);
    let (status, body) = request(relay.http_addr(), "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("flyt_relay_frames_refused_total 0")
    );
    assert_eq!(
        request(relay.http_addr(), "GET", "/healthz", b"").await.0,
        200
    );
    assert_eq!(
        request(relay.http_addr(), "GET", "/readyz", b"").await.0,
        200
    );
    assert_eq!(request(relay.http_addr(), "GET", "/nope", b"").await.0, 404);
    relay.shutdown().await;
}

#[tokio::test]
async fn join_refuses_what_is_not_a_workspace_that_added_this_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.http_addr();

    let (status, body) = request(addr, "POST", "/join", b"").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, body) = request(addr, "POST", "/join", b"not automerge").await;
    assert_eq!(status, 400);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["error"], "bad_request");
    assert_eq!(e["message"], "not a workspace document");

    // A real workspace that never added this relay.
    let home = tempfile::tempdir().unwrap();
    let mut store = peer::Store::open(&home.path().join("flyt.db")).unwrap();
    store.init("alice").unwrap();
    let ws = store.create_workspace("acme").unwrap();
    let bytes = store.workspace_save(ws).unwrap();
    let (status, body) = request(addr, "POST", "/join", &bytes).await;
    assert_eq!(status, 403);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("has not added this relay"),
        "{e}"
    );

    // Oversized bodies are refused before they are read whole.
    let big = vec![0u8; peer::sync::protocol::MAX_FRAME + 1];
    let (status, _) = request(addr, "POST", "/join", &big).await;
    assert_eq!(status, 413);
    assert_eq!(
        relay
            .handle()
            .metrics
            .joins
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    relay.shutdown().await;
}
