//! `flyt serve`'s control socket, typing and presence in `tail`, and `flyt status`, with real
//! nodes on 127.0.0.1. Waits are on output lines with a timeout, never sleeps.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Home;

const WAIT: Duration = Duration::from_secs(30);

/// A running `flyt` process whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(home: &Home, args: &[&str]) -> Running {
        let mut child = home
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flyt");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// `flyt --json serve`, once it says it is serving.
    fn serve(home: &Home) -> Running {
        let mut r = Running::start(home, &["--json", "serve", "--bind", "127.0.0.1:0"]);
        r.until("serving", |v| v["type"] == "serving");
        assert!(
            home.path().join("node.sock").exists(),
            "serve made its socket"
        );
        r
    }

    /// Reads JSON lines until one satisfies `found`; returns it and the lines before it.
    fn until(&mut self, what: &str, found: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let deadline = std::time::Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {before:?}"));
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if found(&v) {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Stops it the way Ctrl-C does and checks it exits cleanly.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = wait(&mut self.child);
        assert!(status.success(), "exit status {status}");
    }

    /// Kills it with SIGKILL: no chance to clean up.
    fn kill(mut self) {
        self.child.kill().unwrap();
        wait(&mut self.child);
    }
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "flyt did not exit");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw request on the control socket; the answer line, parsed.
fn raw_request(home: &Home, bytes: &[u8]) -> Value {
    let mut s = UnixStream::connect(home.path().join("node.sock")).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    // The node may answer (and close) before reading everything of an oversized request.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // One answer line. Not read to the end: a node that answered an oversized request before
    // reading all of it resets the connection after that line (unread data on a closed socket).
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).expect("an answer");
    serde_json::from_str(answer.trim_end()).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// Alice serving `acme` (#general, #random), and bob joined and serving too.
fn two_nodes() -> (Home, Running, Home, Running) {
    let alice = Home::with_alice();
    let a = Running::serve(&alice);
    let ticket = alice.ok(&["invite"]).trim().to_owned();
    let bob = Home::new();
    bob.ok(&["init", "--name", "bob"]);
    bob.ok(&["join", &ticket, "--bind", "127.0.0.1:0"]);
    let b = Running::serve(&bob);
    (alice, a, bob, b)
}

#[test]
fn a_second_terminal_sends_through_the_running_node() {
    let (alice, mut a, bob, b) = two_nodes();
    a.until("bob connected", |v| {
        v["type"] == "peer" && v["event"] == "connected"
    });
    let mut tail = Running::start(&bob, &["--json", "tail", "general"]);
    // Once it shows who is online, it hears the node's events.
    tail.until("alice online in bob's tail", |v| {
        v["type"] == "presence" && v["name"] == "alice" && v["state"] == "online"
    });

    // Through the socket (the debug log says so), and live at bob's.
    let out = alice
        .command(&["send", "general", "hello from a second terminal"])
        .env("RUST_LOG", "flyt=debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("control socket"),
        "not through the node: {stderr}"
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (m, _) = tail.until("the message at bob", |v| {
        v["type"] == "message" && v["id"] == id
    });
    assert_eq!(m["text"], "hello from a second terminal");
    assert_eq!(m["verified"], true);

    // Every command works through it, with the same output as without a node.
    let read = alice.json(&["read", "general"]);
    assert_eq!(read[0]["id"], id);
    let err = alice.fails(&["send", "nowhere", "x"]);
    assert_eq!(err, "error: no channel named \"nowhere\" in this workspace");
    assert!(alice.fails(&["serve"]).contains("already running"));

    // Typing, from the node, reaches bob's tail as an event (and is stored nowhere).
    alice.ok(&["typing", "general"]);
    let (t, _) = tail.until("alice typing", |v| v["type"] == "typing");
    assert_eq!(t["name"], "alice");
    let expires = t["expires_ts"].as_i64().unwrap();
    let now = super::now_ms();
    assert!(expires > now - 5_000 && expires <= now + 5_000, "{t}");

    // Status is the node's: bob is connected, and documents are in sync or catching up.
    let st = alice.json(&["status"]);
    assert_eq!(st["online"], true, "{st:#}");
    let peers = st["live"]["peers"].as_array().unwrap();
    let p = peers
        .iter()
        .find(|p| p["connected"] == true)
        .expect("a connected peer");
    assert_eq!(p["name"], "bob");
    let cu = &st["live"]["catching_up"];
    assert!(cu["total"].as_u64().unwrap() >= 1, "{st:#}");
    assert!(cu["done"].as_u64().unwrap() <= cu["total"].as_u64().unwrap());
    let text = alice.ok(&["status"]);
    assert!(text.contains("1 peer connected"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("live     bob")),
        "{text}"
    );

    // Bob's node stops: his presence goes offline in alice's tail, and she is not online.
    let mut atail = Running::start(&alice, &["--json", "tail", "general"]);
    atail.until("bob online in alice's tail", |v| {
        v["type"] == "presence" && v["name"] == "bob" && v["state"] == "online"
    });
    b.stop();
    let (ev, _) = atail.until("bob offline", |v| {
        v["type"] == "presence" && v["state"] == "offline"
    });
    assert_eq!(ev["name"], "bob");
    let st = alice.json(&["status"]);
    assert_eq!(st["online"], false, "{st:#}");
    drop(tail);
    drop(atail);
    a.stop();
    assert!(
        !alice.path().join("node.sock").exists(),
        "a clean stop removes the socket"
    );
}

#[test]
fn the_socket_is_owner_only_and_a_stale_one_is_replaced() {
    let alice = Home::with_alice();
    let a = Running::serve(&alice);
    let sock = alice.path().join("node.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // A socket others may use is refused (someone could be listening in on it).
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = alice.fails(&["send", "general", "x"]);
    assert!(err.contains("may be used by other users"), "{err}");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    // So is a home others may write (they could swap the socket).
    std::fs::set_permissions(alice.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = alice.fails(&["send", "general", "x"]);
    assert!(err.contains("may be written by other users"), "{err}");
    std::fs::set_permissions(alice.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(alice.read_all("general").len(), 0, "nothing was sent");

    // Killed, the node leaves its socket behind; commands see it is stale and work directly.
    a.kill();
    assert!(sock.exists());
    let id = alice.send("general", "while no node runs");
    assert_eq!(id, alice.read_all("general")[0]["id"]);

    // The next node replaces it, and commands go through that one.
    let a = Running::serve(&alice);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let id2 = alice.send("general", "through the new node");
    assert_eq!(alice.read_all("general").len(), 2);
    assert_eq!(alice.read_all("general")[1]["id"], id2);
    a.stop();
    assert!(!sock.exists());
}

#[test]
fn malformed_requests_get_a_clear_error_and_the_node_keeps_running() {
    let alice = Home::with_alice();
    let a = Running::serve(&alice);
    let bad = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    let v = raw_request(&alice, b"this is not json\n");
    assert_eq!(bad(&v), "bad_request");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("not JSON"),
        "{v}"
    );

    let v = raw_request(&alice, b"\n");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("empty"),
        "{v}"
    );

    let v = raw_request(&alice, b"{\"cmd\":\"teleport\"}\n");
    assert_eq!(
        v["error"]["message"],
        "This Flyt does not know the request \"teleport\"."
    );

    let v = raw_request(&alice, b"{\"cmd\":\"cli\",\"argv\":\"send\"}\n");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("argv"),
        "{v}"
    );

    let v = raw_request(&alice, b"{\"cmd\":\"cli\",\"argv\":[\"frobnicate\"]}\n");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frobnicate"),
        "{v}"
    );

    let mut huge = vec![b'x'; 2 * 1024 * 1024];
    huge.push(b'\n');
    let v = raw_request(&alice, &huge);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{v}"
    );

    // Not even a whole line: the request times out only for that client.
    // (A well-formed API request works next to it.)
    let v = raw_request(
        &alice,
        json!({"cmd": "send", "channel": "general", "text": "still here"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(v["ok"]["text"], "still here", "{v}");

    // The node kept running through all of it.
    let id = alice.send("general", "and through the CLI");
    assert_eq!(alice.read_all("general").len(), 2);
    assert_eq!(alice.read_all("general")[1]["id"], id);
    a.stop();
}
