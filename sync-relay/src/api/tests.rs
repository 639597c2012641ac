//! The admin API through `Router::oneshot`: admins read and search; everyone else gets a clear
//! 401 or 403, and bad parameters a 400.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use crdt_model::Identity;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::archive::tests::Fixture;

const NOW: i64 = 1_800_000_000_000;

fn fixed_now() -> i64 {
    NOW
}

struct Setup {
    app: Router,
    f: Fixture,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let (archive, dir) = crate::archive::tests::sqlite_archive().await;
    let mut f = Fixture::new();
    for n in 1..=5 {
        f.post(n % 2, n, &format!("status report {n}"));
    }
    archive.submit(f.take_records());
    assert!(archive.caught_up(Duration::from_secs(30)).await);
    let state = ApiState {
        now_ms: fixed_now,
        ..ApiState::new(archive)
    };
    Setup {
        app: router(state),
        f,
        _dir: dir,
    }
}

async fn call(app: &Router, uri: &str, auth: Option<String>) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn signed(who: &Identity, uri: &str, ts: i64) -> Option<String> {
    Some(authorization(&who.device, "GET", uri, ts))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn an_admin_pages_through_a_channel() {
    let s = setup().await;
    let alice = &s.f.people[0];
    let uri = format!(
        "/api/workspaces/{}/channels/{}/messages?limit=3",
        s.f.ws, s.f.channel
    );
    let (status, v) = call(&s.app, &uri, signed(alice, &uri, NOW)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let texts: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["status report 5", "status report 4", "status report 3"]
    );
    assert_eq!(v["messages"][0]["verified"], true);
    let next = v["next_before"].as_str().unwrap();
    let uri = format!(
        "/api/workspaces/{}/channels/{}/messages?limit=3&before={next}",
        s.f.ws, s.f.channel
    );
    // A skew inside the bound is fine.
    let (status, v) = call(&s.app, &uri, signed(alice, &uri, NOW - MAX_SKEW_MS + 1)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_eq!(v["next_before"], Value::Null);
}

#[tokio::test]
async fn an_admin_searches_the_workspace() {
    let s = setup().await;
    let alice = &s.f.people[0];
    let uri = format!("/api/workspaces/{}/search?q=report%204", s.f.ws);
    let (status, v) = call(&s.app, &uri, signed(alice, &uri, NOW)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let hits = v["messages"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["text"], "status report 4");
    assert_eq!(hits[0]["channel"], s.f.channel.to_string());
    // No query text: a 400 that says so.
    let uri = format!("/api/workspaces/{}/search?q=%20", s.f.ws);
    let (status, v) = call(&s.app, &uri, signed(alice, &uri, NOW)).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
}

#[tokio::test]
async fn everyone_else_gets_a_clear_refusal() {
    let s = setup().await;
    let (alice, bob) = (&s.f.people[0], &s.f.people[1]);
    let stranger = Identity::from_secrets([40; 32], [41; 32], "eve");
    let uri = format!("/api/workspaces/{}/search?q=report", s.f.ws);
    let cases: Vec<(Option<String>, StatusCode, &str)> = vec![
        (None, StatusCode::UNAUTHORIZED, "missing_auth"),
        (
            Some("Bearer x".into()),
            StatusCode::UNAUTHORIZED,
            "malformed_auth",
        ),
        (
            Some("Flyt device=zz,ts=1,sig=00".into()),
            StatusCode::UNAUTHORIZED,
            "malformed_auth",
        ),
        // Signed for another request.
        (
            signed(
                alice,
                &format!("/api/workspaces/{}/search?q=other", s.f.ws),
                NOW,
            ),
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        // Someone else's key in the header, alice's signature.
        (
            Some(signed(alice, &uri, NOW).unwrap().replace(
                &hex::encode(alice.device_id().0),
                &hex::encode(bob.device_id().0),
            )),
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            signed(alice, &uri, NOW - MAX_SKEW_MS - 1),
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
        ),
        (
            signed(alice, &uri, NOW + MAX_SKEW_MS + 1),
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
        ),
        // A member, not an admin; and a device of nobody in this workspace.
        (signed(bob, &uri, NOW), StatusCode::FORBIDDEN, "not_admin"),
        (
            signed(&stranger, &uri, NOW),
            StatusCode::FORBIDDEN,
            "not_admin",
        ),
        // An owner's person key is not a device key.
        (
            Some(authorization(&alice.person, "GET", &uri, NOW)),
            StatusCode::FORBIDDEN,
            "not_admin",
        ),
    ];
    for (auth, want, want_code) in cases {
        let (status, v) = call(&s.app, &uri, auth.clone()).await;
        assert_eq!((status, code(&v)), (want, want_code), "{auth:?}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(v.get("messages").is_none());
    }
    // The admin of one workspace is nobody in another.
    let other = crdt_model::DocId([77; 16]);
    let uri = format!("/api/workspaces/{other}/search?q=report");
    let (status, v) = call(&s.app, &uri, signed(alice, &uri, NOW)).await;
    assert_eq!((status, code(&v)), (StatusCode::FORBIDDEN, "not_admin"));
}

#[tokio::test]
async fn bad_parameters_are_400s() {
    let s = setup().await;
    let alice = &s.f.people[0];
    let base = format!(
        "/api/workspaces/{}/channels/{}/messages",
        s.f.ws, s.f.channel
    );
    for uri in [
        format!("{base}?limit=0"),
        format!("{base}?limit=100000"),
        format!("{base}?limit=abc"),
        format!("{base}?before=not-an-id"),
        format!("/api/workspaces/{}/channels/nope/messages", s.f.ws),
        "/api/workspaces/nope/search?q=x".to_owned(),
    ] {
        let (status, v) = call(&s.app, &uri, signed(alice, &uri, NOW)).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{uri}: {v}"
        );
    }
}

#[test]
fn the_header_parses_only_in_its_form() {
    let mut h = HeaderMap::new();
    let id = Identity::from_secrets([1; 32], [2; 32], "a");
    h.insert(
        "authorization",
        authorization(&id.device, "GET", "/x", 5).parse().unwrap(),
    );
    let a = parse_auth(&h).unwrap();
    assert_eq!(
        (a.device, a.ts),
        (hex::encode(id.device_id().0).as_str(), "5")
    );
    for bad in [
        "Flyt device=00",
        "Flyt ts=1",
        "Flyt device=..,ts=1,sig=..,extra=1",
        "Flyt nonsense",
    ] {
        h.insert("authorization", bad.parse().unwrap());
        assert!(
            matches!(parse_auth(&h), Err(ApiError::MalformedAuth(_))),
            "{bad}"
        );
    }
}
