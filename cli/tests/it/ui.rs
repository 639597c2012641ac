//! `flyt serve --ui`: the app's API and event stream over real HTTP on 127.0.0.1, against the
//! real binary on a fresh home.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Home;

const WAIT: Duration = Duration::from_secs(30);

/// An HTTP client (plain HTTP on loopback; reqwest still wants a TLS provider chosen).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A running `flyt serve --ui` and the link it printed.
struct Served {
    child: Child,
    base: String,
    token: String,
}

impl Served {
    fn start(home: &Home, ui_dir: &std::path::Path) -> Served {
        let mut child = home
            .command(&[
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--ui",
                "127.0.0.1:0",
                "--ui-dir",
            ])
            .arg(ui_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flyt serve --ui");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("http://") {
                    let _ = tx.send(line);
                }
            }
        });
        let url = rx
            .recv_timeout(WAIT)
            .expect("flyt serve --ui prints its link");
        let (base, token) = url.split_once("/#token=").expect("link holds a token");
        assert!(base.starts_with("http://127.0.0.1:"), "{url}");
        assert_eq!(token.len(), 64, "{url}");
        Served {
            child,
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// Stops it the way Ctrl-C or a service manager does, and checks it exits cleanly.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let (tx, rx) = mpsc::channel();
        let mut child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("a placeholder process"),
        );
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx.recv_timeout(WAIT).expect("stops on SIGTERM").unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(
    http: &reqwest::Client,
    s: &Served,
    token: Option<&str>,
    body: String,
) -> (u16, Value) {
    let mut req = http
        .post(format!("{}/api", s.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST /api");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

async fn api(http: &reqwest::Client, s: &Served, req: Value) -> Value {
    let (status, v) = post(http, s, Some(&s.token), req.to_string()).await;
    assert_eq!(status, 200, "{req} answered {v}");
    v["ok"].clone()
}

/// Reads SSE messages until one satisfies `found`; returns every batch seen.
async fn until_event(resp: &mut reqwest::Response, found: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut buf = String::new();
    let mut batches = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let message: String = buf.drain(..end + 2).collect();
            for line in message.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let batch: Value = serde_json::from_str(data).expect("a JSON batch");
                    assert!(batch.is_array(), "a batch is an array: {batch}");
                    let hit = batch.as_array().unwrap().iter().any(&found);
                    batches.push(batch);
                    if hit {
                        return batches;
                    }
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no such event within {WAIT:?}; saw {batches:?}"))
            .expect("the event stream")
            .expect("the event stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_ui_onboards_chats_and_streams_events() {
    let home = Home::new();
    let ui = tempfile::tempdir().unwrap();
    std::fs::write(
        ui.path().join("index.html"),
        "<!doctype html><title>Flyt UI</title>",
    )
    .unwrap();
    let s = Served::start(&home, ui.path());
    let http = client();

    // The page itself needs no token (it holds no data).
    let page = http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("Flyt UI"));

    // No token, a wrong token: 401 and no data.
    let whoami = json!({"cmd": "whoami"}).to_string();
    for token in [None, Some("nope"), Some(&s.token[..63])] {
        let (status, v) = post(&http, &s, token, whoami.clone()).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(v["error"]["code"], "not_allowed");
        assert!(v.get("ok").is_none());
    }
    for q in ["", "?token=nope"] {
        let r = http
            .get(format!("{}/events{q}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{q}");
    }

    // A fresh home onboards through the API.
    assert_eq!(
        api(&http, &s, json!({"cmd": "whoami"})).await,
        json!({"initialized": false})
    );
    let (status, v) = post(
        &http,
        &s,
        Some(&s.token),
        json!({"cmd": "members"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("not_initialized"))
    );
    api(&http, &s, json!({"cmd": "init", "name": "alice"})).await;
    api(
        &http,
        &s,
        json!({"cmd": "workspace_create", "name": "acme"}),
    )
    .await;
    let ch = api(
        &http,
        &s,
        json!({"cmd": "channel_create", "name": "general"}),
    )
    .await;

    let mut events = http
        .get(format!("{}/events?token={}", s.base, s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let sent = api(
        &http,
        &s,
        json!({"cmd": "send", "channel": ch["id"], "text": "hello from the browser"}),
    )
    .await;
    let id = sent["id"].clone();
    until_event(&mut events, |e| {
        e["type"] == "message" && e["message"]["id"] == id
    })
    .await;

    // Bad input: a clear error, the right status, nothing changed.
    let (status, v) = post(&http, &s, Some(&s.token), "{not json".into()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let long = "x".repeat(40_001);
    let (status, v) = post(
        &http,
        &s,
        Some(&s.token),
        json!({"cmd": "send", "channel": "general", "text": long}).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["message"],
        "This message is 40001 characters long; the limit is 40000."
    );
    let (status, v) = post(
        &http,
        &s,
        Some(&s.token),
        json!({"cmd": "join", "ticket": "garbage"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let page = api(&http, &s, json!({"cmd": "read", "channel": "general"})).await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    drop(events);
    s.stop();

    // What the browser did is in the home, for the CLI too.
    let rows = home.read_all("general");
    assert_eq!(rows[0]["text"], "hello from the browser");
}

#[test]
fn only_loopback_and_a_missing_ui_is_explained() {
    let home = Home::new();
    let err = home.fails(&["serve", "--ui", "0.0.0.0:0"]);
    assert!(err.contains("only listens on loopback"), "{err}");

    // Without a built UI the API still works and the page says how to build it.
    let empty = tempfile::tempdir().unwrap();
    let s = Served::start(&home, empty.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = client();
        let page = http.get(format!("{}/", s.base)).send().await.unwrap();
        assert_eq!(page.status().as_u16(), 503);
        assert!(page.text().await.unwrap().contains("npm run build"));
        assert_eq!(
            api(&http, &s, json!({"cmd": "whoami"})).await,
            json!({"initialized": false})
        );
    });
    s.stop();
}
