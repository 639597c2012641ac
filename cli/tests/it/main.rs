//! End-to-end tests of the `flyt` binary.
//!
//! Every test runs the real executable on its own temporary home (`--home` and `FLYT_HOME` both
//! point at it, so the user's real home is never touched) and checks what a person or a script
//! sees: stdout, stderr, the exit status, and what the database holds afterwards.
//!
//! Processes are synchronised only by waiting for them (`wait`, `try_wait`, joining threads);
//! the one `sleep` is the fault injection of the kill test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

mod node;
mod ui;

const FLYT: &str = env!("CARGO_BIN_EXE_flyt");

/// Well-formed (it parses as a message id) but no such message exists.
const UNKNOWN_ID: &str = "0000000000000000000000000z";

/// One Flyt home in a temporary directory, removed when dropped.
struct Home {
    dir: TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("create a temporary home"),
        }
    }

    /// A home where alice owns workspace `acme` with channels #general and #random.
    fn with_alice() -> Home {
        let home = Home::new();
        home.ok(&["init", "--name", "alice"]);
        home.ok(&["workspace", "create", "acme"]);
        home.ok(&["channel", "create", "general"]);
        home.ok(&["channel", "create", "random"]);
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn db(&self) -> PathBuf {
        self.path().join("flyt.db")
    }

    /// `flyt --home <this home> ARGS`, with `FLYT_HOME` pointing here too.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FLYT);
        c.arg("--home")
            .arg(self.path())
            .args(args)
            .env("FLYT_HOME", self.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {FLYT}: {e}"))
    }

    /// Runs a command that must succeed with nothing on stderr; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "flyt {} failed ({}): {}",
            show(args),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Runs `flyt --json ARGS`, which must succeed; returns the parsed output.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let s = self.ok(&all);
        serde_json::from_str(&s)
            .unwrap_or_else(|e| panic!("flyt {} printed bad JSON ({e}): {s}", show(args)))
    }

    /// `flyt send` in text mode: prints exactly the new id and a newline.
    fn send(&self, channel: &str, text: &str) -> String {
        let out = self.ok(&["send", channel, text]);
        let id = out
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("send printed {out:?}"));
        assert!(is_id(id), "send printed {out:?}, not exactly an id");
        id.to_owned()
    }

    /// `flyt dm NAMES TEXT`: prints exactly the new id.
    fn send_dm(&self, names: &str, text: &str) -> String {
        let out = self.ok(&["dm", names, text]);
        let id = out.trim_end();
        assert!(is_id(id), "dm printed {out:?}, not exactly an id");
        id.to_owned()
    }

    /// Every message of a channel's main timeline, oldest first.
    fn read_all(&self, channel: &str) -> Vec<Value> {
        array(self.json(&["read", channel, "--limit", "1000"]))
    }

    /// Runs a command that must fail like every runtime error does: exit status 1, nothing on
    /// stdout, exactly one line on stderr, starting with `error:`. Returns that line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "flyt {} should fail with status 1; stderr: {err}",
            show(args)
        );
        assert!(
            out.stdout.is_empty(),
            "flyt {} failed but printed on stdout: {}",
            show(args),
            String::from_utf8_lossy(&out.stdout)
        );
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: ") && err.ends_with('\n'),
            "flyt {} should print one `error:` line, printed {err:?}",
            show(args)
        );
        lines[0].to_owned()
    }

    /// Everything a script can see of this home, as printed by `--json` commands.
    fn snapshot(&self, thread: &str) -> String {
        [
            vec!["read", "general", "--limit", "1000"],
            vec!["read", "random", "--limit", "1000"],
            vec!["read", "general", "--thread", thread],
            vec!["channel", "list"],
            vec!["workspace", "list"],
            vec!["member", "list"],
            vec!["whoami"],
        ]
        .iter()
        .map(|args| {
            let mut all = vec!["--json"];
            all.extend_from_slice(args);
            self.ok(&all)
        })
        .collect()
    }
}

/// Arguments for a failure message, long ones shortened.
fn show(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.chars().count() > 40 {
                format!("<{} chars>", a.chars().count())
            } else {
                format!("{a:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A message id: 26 lowercase Crockford base32 characters (a ULID).
fn is_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_lowercase() && !b"ilou".contains(&c)))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}"),
    }
}

fn id_of(m: &Value) -> String {
    m["id"].as_str().expect("message id").to_owned()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter().map(id_of).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Asserts that `m` is a message object with every documented field of the right type, and
/// returns it for further checks.
fn message(m: &Value) -> &Value {
    let fail = |what: &str| -> ! { panic!("message {what}: {m:#}") };
    let opt_id = |v: &Value| v.is_null() || v.as_str().is_some_and(is_id);
    if !m["id"].as_str().is_some_and(is_id) {
        fail("id is not an id");
    }
    if !m["channel"]
        .as_str()
        .is_some_and(|c| !c.is_empty() && !c.starts_with('#'))
    {
        fail("channel is not a bare channel name");
    }
    if !m["author"]["name"].is_string() || !m["author"]["key"].as_str().is_some_and(is_hex64) {
        fail("author is not {name, key}");
    }
    let day = 24 * 3600 * 1000;
    let recent = m["ts"]
        .as_i64()
        .is_some_and(|ts| (ts - now_ms()).abs() < day);
    if !recent {
        fail("ts is not a recent time in ms");
    }
    if !m["text"].is_string() {
        fail("text is not a string");
    }
    if !m["edited"].is_boolean() || !m["deleted"].is_boolean() || !m["verified"].is_boolean() {
        fail("edited/deleted/verified are not booleans");
    }
    let reactions_ok = m["reactions"].as_object().is_some_and(|r| {
        r.values().all(|who| {
            who.as_array()
                .is_some_and(|w| !w.is_empty() && w.iter().all(Value::is_string))
        })
    });
    if !reactions_ok {
        fail("reactions is not emoji -> [names]");
    }
    if !opt_id(&m["reply_to"]) || !opt_id(&m["thread_root"]) {
        fail("reply_to/thread_root are not null or an id");
    }
    if !m["reply_count"].is_u64() {
        fail("reply_count is not a count");
    }
    m
}

/// A tiny deterministic PRNG (xorshift64*): the kill test's delays are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn walkthrough_json() {
    let home = Home::new();

    // Identity.
    let me = home.json(&["init", "--name", "alice"]);
    assert_eq!(me["name"], "alice");
    let key = me["key"].as_str().expect("key").to_owned();
    assert!(is_hex64(&key), "{me}");
    assert!(me["device"].as_str().is_some_and(is_hex64), "{me}");
    assert_ne!(me["device"], me["key"]);
    assert_eq!(me["home"].as_str(), home.path().to_str());
    assert_eq!(home.json(&["whoami"]), me);
    let text = home.ok(&["whoami"]);
    assert!(text.contains("alice") && text.contains(&key), "{text}");

    // Workspaces: the newest is current; `use` takes a name or an id.
    let out = home.ok(&["workspace", "create", "acme"]);
    let acme = out.trim_end().to_owned();
    assert_eq!(
        out,
        format!("{acme}\n"),
        "workspace create prints just the id"
    );
    let side = home.json(&["workspace", "create", "side project"]);
    assert_eq!(side["kind"], "workspace");
    assert_eq!(side["name"], "side project");
    let side_id = side["id"].as_str().expect("workspace id").to_owned();
    assert_ne!(side_id, acme);
    let current = |list: &Value| -> Vec<String> {
        array(list.clone())
            .iter()
            .filter(|w| w["current"] == true)
            .map(|w| w["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let list = home.json(&["workspace", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|w| w["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["acme", "side project"]);
    for w in list.as_array().expect("array") {
        assert_eq!(w["role"], "owner");
        assert_eq!(w["members"], 1);
    }
    assert_eq!(current(&list), [side_id.as_str()]);
    let used = home.json(&["workspace", "use", "acme"]);
    assert_eq!(current(&used), [acme.as_str()]);
    assert_eq!(current(&home.json(&["workspace", "list"])), [acme.as_str()]);
    home.json(&["workspace", "use", &side_id]);
    assert_eq!(
        current(&home.json(&["workspace", "list"])),
        [side_id.as_str()]
    );
    assert_eq!(home.json(&["channel", "list"]), json!([]));
    home.json(&["workspace", "use", &acme]);
    assert_eq!(current(&home.json(&["workspace", "list"])), [acme.as_str()]);

    // Channels, with or without `#`.
    let general = home.json(&[
        "channel",
        "create",
        "general",
        "--topic",
        "Company-wide announcements",
    ]);
    assert_eq!(general["kind"], "channel");
    assert_eq!(general["name"], "#general");
    let general_id = general["id"].as_str().expect("channel id").to_owned();
    let out = home.ok(&["channel", "create", "#random"]);
    let random_id = out.trim_end().to_owned();
    assert_eq!(
        out,
        format!("{random_id}\n"),
        "channel create prints just the id"
    );
    assert_eq!(
        home.json(&["channel", "list"]),
        json!([
            {"id": general_id, "name": "general", "topic": "Company-wide announcements",
             "private": false, "dm": false, "unread": 0, "mentions": 0},
            {"id": random_id, "name": "random", "topic": "",
             "private": false, "dm": false, "unread": 0, "mentions": 0},
        ])
    );
    // Channels belong to their workspace.
    home.json(&["workspace", "use", "side project"]);
    assert_eq!(home.json(&["channel", "list"]), json!([]));
    home.json(&["workspace", "use", "acme"]);

    // Send: text mode prints exactly the new id.
    let out = home.ok(&["send", "general", "hello world"]);
    let root = out.trim_end().to_owned();
    assert!(is_id(&root));
    assert_eq!(out, format!("{root}\n"));

    let reply = home.json(&[
        "send",
        "#general",
        "a reply that quotes",
        "--reply-to",
        &root,
    ]);
    let reply_id = id_of(message(&reply));
    assert_eq!(reply["channel"], "general");
    assert_eq!(reply["author"], json!({"name": "alice", "key": key}));
    assert_eq!(reply["text"], "a reply that quotes");
    assert_eq!(reply["edited"], false);
    assert_eq!(reply["deleted"], false);
    assert_eq!(reply["reactions"], json!({}));
    assert_eq!(reply["reply_to"], root.as_str());
    assert_eq!(reply["thread_root"], Value::Null);
    assert_eq!(reply["reply_count"], 0);
    assert_eq!(reply["verified"], true);

    let t1 = home.json(&["send", &general_id, "first in thread", "--thread", &root]);
    let t1_id = id_of(message(&t1));
    assert_eq!(t1["thread_root"], root.as_str());
    assert_eq!(t1["reply_to"], Value::Null);
    // A reply to a reply hangs off the thread's root.
    let t2 = home.json(&["send", "general", "second in thread", "--thread", &t1_id]);
    let t2_id = id_of(message(&t2));
    assert_eq!(t2["thread_root"], root.as_str());

    // Read: the main timeline holds the root and the reply, not the thread replies.
    let timeline = array(home.json(&["read", "general"]));
    assert_eq!(ids(&timeline), [root.as_str(), reply_id.as_str()]);
    for m in &timeline {
        message(m);
    }
    assert_eq!(timeline[0]["text"], "hello world");
    assert_eq!(timeline[0]["reply_count"], 2);
    assert_eq!(timeline[0]["reply_to"], Value::Null);
    assert_eq!(timeline[0]["thread_root"], Value::Null);
    assert_eq!(timeline[1], reply);
    // `general`, `#general` and the channel id are the same channel.
    assert_eq!(home.json(&["read", "#general"]), json!(timeline));
    assert_eq!(home.json(&["read", &general_id]), json!(timeline));
    assert_eq!(home.json(&["read", "random"]), json!([]));

    // A thread: its root, then the replies; any message of the thread names it.
    let thread = array(home.json(&["read", "general", "--thread", &root]));
    assert_eq!(ids(&thread), [root.clone(), t1_id.clone(), t2_id.clone()]);
    assert_eq!(
        home.json(&["read", "#general", "--thread", &t2_id]),
        json!(thread)
    );
    let newest = array(home.json(&["read", "general", "--thread", &root, "--limit", "1"]));
    assert_eq!(ids(&newest), [root.clone(), t2_id.clone()]);

    // Paging back with --limit and --before.
    for i in 1..=5 {
        home.send("general", &format!("page {i}"));
    }
    let all = ids(&home.read_all("general"));
    assert_eq!(all.len(), 7);
    assert_eq!(all[..2], [root.as_str(), reply_id.as_str()]);
    let page = |args: &[&str]| {
        let mut a = vec!["read", "general"];
        a.extend_from_slice(args);
        ids(&array(home.json(&a)))
    };
    assert_eq!(page(&["--limit", "3"]), all[4..]);
    assert_eq!(page(&["--limit", "3", "--before", &all[4]]), all[1..4]);
    assert_eq!(page(&["--limit", "3", "--before", &all[1]]), all[..1]);
    assert!(page(&["--before", &all[0]]).is_empty());
    let mut walked: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["--limit", "2"];
        if let Some(c) = &cursor {
            args.extend(["--before", c.as_str()]);
        }
        let p = page(&args);
        let Some(first) = p.first() else { break };
        cursor = Some(first.clone());
        walked.splice(0..0, p);
    }
    assert_eq!(walked, all);

    // Edit, also by a unique id prefix.
    let edited = home.json(&["edit", &root, "hello edited world"]);
    assert_eq!(id_of(message(&edited)), root);
    assert_eq!(edited["text"], "hello edited world");
    assert_eq!(edited["edited"], true);
    assert!(edited["edited_ts"].as_i64() >= edited["ts"].as_i64());
    let edited = home.json(&["edit", &all[2][..16], "page one, edited"]);
    assert_eq!(id_of(message(&edited)), all[2]);
    assert_eq!(edited["text"], "page one, edited");

    // React: emoji and shortcodes; reacting twice is once; --remove takes it back.
    let r = home.json(&["react", &root, "👍"]);
    assert_eq!(message(&r)["reactions"], json!({"👍": ["alice"]}));
    let r = home.json(&["react", &root, ":tada:"]);
    assert_eq!(r["reactions"], json!({"👍": ["alice"], "🎉": ["alice"]}));
    let r = home.json(&["react", &root, "👍"]);
    assert_eq!(r["reactions"], json!({"👍": ["alice"], "🎉": ["alice"]}));
    let r = home.json(&["react", &root, "👍", "--remove"]);
    assert_eq!(message(&r)["reactions"], json!({"🎉": ["alice"]}));
    let r = home.json(&["react", &t1_id, ":tada:"]);
    assert_eq!(r["reactions"], json!({"🎉": ["alice"]}));
    let r = home.json(&["react", &t1_id, ":tada:", "--remove"]);
    assert_eq!(r["reactions"], json!({}));
    let timeline = home.read_all("general");
    assert_eq!(timeline[0]["reactions"], json!({"🎉": ["alice"]}));
    assert_eq!(timeline[0]["text"], "hello edited world");
    assert_eq!(timeline[0]["edited"], true);

    // Delete: the message stays in the timeline, without its text.
    let d = home.json(&["delete", &reply_id]);
    assert_eq!(id_of(message(&d)), reply_id);
    assert_eq!(d["deleted"], true);
    assert_eq!(d["text"], "");
    let timeline = home.read_all("general");
    assert_eq!(ids(&timeline), all);
    assert_eq!(timeline[1]["deleted"], true);
    assert_eq!(timeline[1]["text"], "");

    // Search: newest first, whole words and a prefix of the last one, deleted text is gone.
    let elsewhere = home.send("random", "hello from random");
    let search = |args: &[&str]| {
        let mut a = vec!["search"];
        a.extend_from_slice(args);
        let rows = array(home.json(&a));
        for m in &rows {
            message(m);
        }
        ids(&rows)
    };
    assert_eq!(search(&["hello"]), [elsewhere.as_str(), root.as_str()]);
    assert_eq!(search(&["hel"]), [elsewhere.as_str(), root.as_str()]);
    assert_eq!(search(&["hello", "--limit", "1"]), [elsewhere.as_str()]);
    assert_eq!(
        search(&["hello", "--channel", "random"]),
        [elsewhere.as_str()]
    );
    assert_eq!(search(&["hello", "--channel", "#general"]), [root.as_str()]);
    assert_eq!(search(&["edited"]), [all[2].clone(), root.clone()]);
    assert_eq!(search(&["quotes"]), Vec::<String>::new());
    assert_eq!(search(&["thread"]), [t2_id.clone(), t1_id.clone()]);
    let hit = array(home.json(&["search", "from random"])).remove(0);
    assert_eq!(hit["channel"], "random");
    assert_eq!(hit["text"], "hello from random");
}

#[test]
fn text_output_is_friendly() {
    let home = Home::with_alice();
    let plain = home.send("general", "good morning everyone");
    let edited = home.send("general", "first draft");
    home.ok(&["edit", &edited, "second draft"]);
    let gone = home.send("general", "a secret that was posted by mistake");
    home.ok(&["delete", &gone]);

    let out = home.ok(&["read", "general"]);
    assert!(!out.contains('{'), "text mode is not JSON: {out}");
    assert!(!out.contains('\x1b'), "no colours when piped: {out}");
    for want in [
        "alice",
        "good morning everyone",
        "second draft",
        "(edited)",
        "This message was deleted.",
        &plain,
    ] {
        assert!(out.contains(want), "`read` should show {want:?}:\n{out}");
    }
    assert!(!out.contains("first draft"), "{out}");
    assert!(!out.contains("secret"), "{out}");
    // "(edited)" belongs to the edited message only; the deleted one shows no old text.
    assert_eq!(out.matches("(edited)").count(), 1, "{out}");
    let at = |s: &str| {
        out.find(s)
            .unwrap_or_else(|| panic!("{s:?} missing:\n{out}"))
    };
    assert!(at("second draft") < at("(edited)"));
    assert!(at("(edited)") < at("This message was deleted."));

    assert_eq!(home.ok(&["read", "random"]), "No messages yet.\n");
}

#[test]
fn errors_are_one_line_and_change_nothing() {
    // Before `init` there is no identity: every command says to run `init`, and creates none.
    let fresh = Home::new();
    for args in [
        &["whoami"][..],
        &["send", "general", "hi"],
        &["read", "general"],
        &["workspace", "create", "w"],
        &["workspace", "list"],
        &["channel", "create", "general"],
        &["channel", "list"],
        &["edit", UNKNOWN_ID, "x"],
        &["search", "hi"],
    ] {
        let line = fresh.fails(args);
        assert!(line.contains("flyt init"), "{line}");
    }
    fresh.fails(&["whoami"]);
    fresh.ok(&["init", "--name", "carol"]);

    let home = Home::with_alice();
    let root = home.send("general", "hello");
    let reply = home.send("general", "hello again");
    home.ok(&["send", "general", "in the thread", "--thread", &root]);
    home.ok(&["react", &root, "👍"]);
    home.ok(&["edit", &reply, "hello again, edited"]);
    let gone = home.send("general", "this one is deleted");
    home.ok(&["delete", &gone]);
    let other = home.send("random", "in random");

    let too_long = "a".repeat(40_001);
    let too_long_wide = "é".repeat(40_001);
    // Editing another person's message is refused by the model (crdt-model unit tests): a second
    // identity's message cannot reach this home without sync, so it is not tested here.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["send", "nope", "hi"], "no channel named \"nope\""),
        (vec!["send", "#nope", "hi"], "#nope"),
        (vec!["read", "nope"], "nope"),
        (vec!["search", "hello", "--channel", "nope"], "nope"),
        (vec!["send", "general", ""], "empty"),
        (vec!["send", "general", " \t\n  "], "empty"),
        (vec!["send", "general", too_long.as_str()], "40001"),
        (vec!["send", "general", too_long_wide.as_str()], "40001"),
        (vec!["edit", reply.as_str(), ""], "empty"),
        (vec!["edit", reply.as_str(), "   "], "empty"),
        (vec!["edit", reply.as_str(), too_long.as_str()], "40001"),
        (vec!["edit", "not-an-id!", "x"], "not-an-id!"),
        (vec!["delete", "not-an-id!"], "not-an-id!"),
        (vec!["react", "not-an-id!", "👍"], "not-an-id!"),
        (
            vec!["send", "general", "x", "--reply-to", "not-an-id!"],
            "not-an-id!",
        ),
        (
            vec!["send", "general", "x", "--thread", "not-an-id!"],
            "not-an-id!",
        ),
        (
            vec!["read", "general", "--before", "not-an-id!"],
            "not-an-id!",
        ),
        (
            vec!["read", "general", "--thread", "not-an-id!"],
            "not-an-id!",
        ),
        (vec!["edit", UNKNOWN_ID, "x"], UNKNOWN_ID),
        (vec!["delete", UNKNOWN_ID], UNKNOWN_ID),
        (vec!["react", UNKNOWN_ID, "👍"], UNKNOWN_ID),
        (
            vec!["send", "general", "x", "--reply-to", UNKNOWN_ID],
            UNKNOWN_ID,
        ),
        (
            vec!["send", "general", "x", "--thread", UNKNOWN_ID],
            UNKNOWN_ID,
        ),
        (vec!["read", "general", "--before", UNKNOWN_ID], UNKNOWN_ID),
        (vec!["read", "general", "--thread", UNKNOWN_ID], UNKNOWN_ID),
        // A thread lives in one channel.
        (
            vec!["send", "random", "x", "--thread", root.as_str()],
            root.as_str(),
        ),
        (
            vec!["send", "general", "x", "--thread", other.as_str()],
            other.as_str(),
        ),
        (vec!["react", root.as_str(), "a b"], "emoji"),
        (vec!["react", root.as_str(), ""], "emoji"),
        (vec!["react", root.as_str(), "👍\n"], "emoji"),
        (vec!["edit", gone.as_str(), "x"], "deleted"),
        (vec!["delete", gone.as_str()], "deleted"),
        (vec!["react", gone.as_str(), "👍"], "deleted"),
        (vec!["workspace", "use", "nope"], "nope"),
        (vec!["workspace", "create", ""], "name"),
        (vec!["channel", "create", "general"], "already exists"),
        (vec!["channel", "create", "#General"], "already exists"),
        (vec!["init", "--name", "alice"], "already"),
        (vec!["init", "--name", "bob"], "already"),
    ];
    let before = home.snapshot(&root);
    for (args, want) in &cases {
        let line = home.fails(args);
        assert!(
            line.contains(want),
            "flyt {}: {line:?} should mention {want:?}",
            show(args)
        );
        assert_eq!(
            home.snapshot(&root),
            before,
            "flyt {} failed but changed something",
            show(args)
        );
    }

    // Usage errors: clap's message (its first line starts with `error:`, then a usage hint),
    // status 2, and nothing changed either.
    for args in [
        &["frobnicate"][..],
        &["send", "general"],
        &["read", "general", "--limit", "many"],
        &["react", root.as_str()],
        &["whoami", "--no-such-flag"],
        &["workspace"],
    ] {
        let out = home.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "flyt {}: {err}", show(args));
        assert!(out.stdout.is_empty(), "flyt {}", show(args));
        assert!(err.starts_with("error: "), "flyt {}: {err}", show(args));
        assert_eq!(home.snapshot(&root), before, "flyt {}", show(args));
    }

    // The limit itself is fine, counted in characters (80,000 bytes here).
    let longest = "é".repeat(40_000);
    let id = home.send("general", &longest);
    let m = home.read_all("general").pop().expect("a message");
    assert_eq!(id_of(&m), id);
    assert_eq!(m["text"].as_str().map(|t| t.chars().count()), Some(40_000));
    let edited = home.json(&["edit", &id, &"a".repeat(40_000)]);
    assert_eq!(edited["text"].as_str().map(str::len), Some(40_000));
}

#[test]
fn killed_mid_write_loses_nothing_acknowledged() {
    let home = Home::with_alice();
    home.send("general", "before the storm");
    let mut rng = Rng(0x00f1_7e5e_edc0_ffee);
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut kills_sent = 0;
    let mut kills_landed: Vec<String> = Vec::new();
    for i in 0..80 {
        let text = format!("msg-{i}");
        let mut child = home
            .command(&["send", "general", &text])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flyt send");
        let r = rng.next();
        // About one run in eight is left alone; the others get SIGKILL after 0..=20 ms.
        if !r.is_multiple_of(8) {
            let delay = (r >> 8) % 21;
            // Fault injection, not synchronisation: let the process get some way into its
            // write before killing it.
            std::thread::sleep(Duration::from_millis(delay));
            if child.try_wait().expect("try_wait").is_none() {
                kills_sent += 1;
                // The child is not reaped yet, so this cannot hit another process; if it exited
                // meanwhile the kill does nothing and it counts as finished.
                child.kill().expect("kill flyt send");
            }
        }
        let out = child.wait_with_output().expect("wait for flyt send");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let id = stdout.strip_suffix('\n').unwrap_or("");
            assert!(is_id(id), "send {i} succeeded but printed {stdout:?}");
            acked.push((id.to_owned(), text));
        } else {
            // The only way a send may fail here is by being killed.
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "send {i} failed on its own ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            kills_landed.push(text);
        }
    }

    let all = home.read_all("general");
    for m in &all {
        message(m);
    }
    let by_id: HashMap<String, &Value> = all.iter().map(|m| (id_of(m), m)).collect();
    assert_eq!(by_id.len(), all.len(), "message ids are unique");
    for (id, text) in &acked {
        let m = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged message {id} ({text}) was lost"));
        assert_eq!(m["text"], text.as_str());
    }
    let mut texts: HashMap<&str, usize> = HashMap::new();
    for m in &all {
        *texts.entry(m["text"].as_str().expect("text")).or_default() += 1;
    }
    assert!(
        texts.values().all(|&n| n == 1),
        "a message was stored twice: {texts:?}"
    );
    let committed_anyway = kills_landed
        .iter()
        .filter(|t| texts.contains_key(t.as_str()))
        .count();
    assert_eq!(all.len(), 1 + acked.len() + committed_anyway);
    eprintln!(
        "kill test: 80 sends, {} acknowledged, {kills_sent} kills sent, {} landed before an \
         acknowledgement ({committed_anyway} of those had committed, {} had not)",
        acked.len(),
        kills_landed.len(),
        kills_landed.len() - committed_anyway
    );
    assert!(!kills_landed.is_empty(), "no kill interrupted a send");
    assert!(!acked.is_empty(), "no send finished");

    // The database file is sound, the search index matches its table, and work goes on.
    let db = rusqlite::Connection::open(home.db()).expect("open the database");
    let check: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("integrity_check runs");
    assert_eq!(check, ["ok"]);
    db.execute(
        "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')",
        [],
    )
    .expect("the full-text index matches the messages");
    drop(db);
    let after = home.send("general", "after the storm");
    let again = home.read_all("general");
    assert_eq!(again.len(), all.len() + 1);
    assert_eq!(again.last().map(id_of), Some(after));
    home.ok(&["read", "general"]);
    let found = array(home.json(&["search", "storm"]));
    assert_eq!(found.len(), 2);
}

#[test]
fn two_processes_at_once() {
    let home = Home::with_alice();
    let writing_done = AtomicBool::new(false);
    let (a, b, reads) = std::thread::scope(|s| {
        let writer = |tag: &'static str| {
            let home = &home;
            s.spawn(move || {
                (0..40)
                    .map(|i| {
                        let text = format!("{tag}-{i}");
                        (home.send("general", &text), text)
                    })
                    .collect::<Vec<_>>()
            })
        };
        let wa = writer("a");
        let wb = writer("b");
        let reader = s.spawn(|| {
            let mut reads = 0;
            let mut seen = 0;
            loop {
                let done = writing_done.load(Ordering::SeqCst);
                // `ok` asserts that every read succeeds.
                let rows = home.read_all("general");
                let unique: HashSet<String> = ids(&rows).into_iter().collect();
                assert_eq!(unique.len(), rows.len(), "a read showed an id twice");
                assert!(rows.len() >= seen, "a later read showed fewer messages");
                seen = rows.len();
                reads += 1;
                if done {
                    return reads;
                }
            }
        });
        // Join everything before unwrapping, so a failed writer cannot leave the reader looping.
        let a = wa.join();
        let b = wb.join();
        writing_done.store(true, Ordering::SeqCst);
        let reads = reader.join();
        (
            a.expect("writer a"),
            b.expect("writer b"),
            reads.expect("reader"),
        )
    });
    eprintln!("concurrency test: 80 sends in two processes at a time, {reads} reads alongside");
    assert!(reads >= 2);

    let all = home.read_all("general");
    assert_eq!(all.len(), 80);
    let stored: BTreeMap<String, String> = all
        .iter()
        .map(|m| {
            (
                id_of(message(m)),
                m["text"].as_str().expect("text").to_owned(),
            )
        })
        .collect();
    assert_eq!(stored.len(), 80, "ids are unique");
    let sent: BTreeMap<String, String> = a.into_iter().chain(b).collect();
    assert_eq!(stored, sent);
}

#[test]
fn private_channels_dms_and_devices_offline() {
    let home = Home::with_alice();
    home.ok(&[
        "channel",
        "create",
        "secret",
        "--private",
        "--topic",
        "hush",
    ]);
    let members = array(home.json(&["channel", "members", "secret"]));
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["name"], "alice");
    let id = home.send("secret", "only me so far");
    assert_eq!(ids(&home.read_all("secret")), [id]);

    // Bad input: one clear line, nothing changed.
    let err = home.fails(&["channel", "add", "secret", "nobody"]);
    assert!(err.contains("no member named \"nobody\""), "{err}");
    let err = home.fails(&["channel", "kick", "general", "alice"]);
    assert!(err.contains("only private channels"), "{err}");
    let err = home.fails(&["channel", "kick", "secret", "alice"]);
    assert!(err.contains("creator"), "{err}");
    let err = home.fails(&["channel", "create", "x", "--private", "--members", "nobody"]);
    assert!(err.contains("no member named"), "{err}");
    let usage = home.run(&["channel", "create", "y", "--members", "alice"]);
    assert_eq!(usage.status.code(), Some(2), "--members needs --private");
    let err = home.fails(&["read", "@nobody"]);
    assert!(err.contains("no member named"), "{err}");

    // A DM with myself is a channel like the others, listed as a DM.
    let note = home.send_dm("alice", "note to self");
    assert_eq!(ids(&home.read_all("@alice")), [note]);
    let channels = array(home.json(&["channel", "list"]));
    let dm: Vec<&Value> = channels.iter().filter(|c| c["dm"] == true).collect();
    assert_eq!(dm.len(), 1);
    assert_eq!(
        (dm[0]["name"].as_str(), &dm[0]["private"]),
        (Some("@alice"), &json!(true))
    );
    assert!(home.ok(&["channel", "list"]).contains("@alice"));

    // Devices: this one; linking needs a running node, joining a fresh home.
    let devices = array(home.json(&["device", "list"]));
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["this"], true);
    let err = home.fails(&["device", "link"]);
    assert!(err.contains("flyt serve"), "{err}");
    let err = home.fails(&["device", "join", "flytdev1abc"]);
    assert!(err.contains("already has an identity"), "{err}");
    let fresh = Home::new();
    let err = fresh.fails(&["device", "join", "flyt1abc"]);
    assert!(err.contains("not a Flyt device-link ticket"), "{err}");
}

#[test]
fn broken_pipe_exits_zero() {
    let home = Home::with_alice();
    // ~2 kB per message: even the default 50 messages are more than a pipe buffer (64 KiB), so
    // the writer really meets the closed pipe.
    let filler = "lorem ipsum dolor sit amet ".repeat(75);
    for i in 0..300 {
        home.send("general", &format!("{i} {filler}"));
    }
    for args in [
        &["read", "general"][..],
        &["read", "general", "--limit", "1000"],
        &["--json", "read", "general", "--limit", "1000"],
        &["search", "lorem", "--limit", "100"],
        &["--json", "search", "lorem", "--limit", "100"],
    ] {
        let full = home.ok(args);
        assert!(
            full.len() > 64 * 1024,
            "flyt {}: output too small",
            show(args)
        );

        let mut child = home
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flyt");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut first = [0u8; 1];
        stdout.read_exact(&mut first).expect("first byte");
        drop(stdout);
        let out = child.wait_with_output().expect("wait for flyt");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "flyt {} on a closed pipe: {}: {err}",
            show(args),
            out.status
        );
        assert!(
            !err.to_lowercase().contains("error"),
            "flyt {}: {err}",
            show(args)
        );
    }
}

#[test]
fn relay_commands_refuse_bad_urls_and_unreachable_relays_and_change_nothing() {
    let home = Home::with_alice();
    assert_eq!(home.json(&["relay", "list"]), json!([]));
    let state = || {
        (
            home.json(&["workspace", "list"]),
            home.json(&["member", "list"]),
        )
    };
    let before = state();
    // Port 1 on loopback: nothing listens there.
    for (url, says) in [
        (
            "http://127.0.0.1:1",
            "could not reach the relay at http://127.0.0.1:1",
        ),
        ("ftp://relay.example", "a relay URL starts with http://"),
        ("https://relay.example", "over http:// only"),
    ] {
        let err = home.fails(&["relay", "add", url]);
        assert!(err.contains(says), "{url}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let err = home.fails(&["relay", "remove", "http://127.0.0.1:1"]);
    assert!(err.contains("no relay \"http://127.0.0.1:1\""), "{err}");
    assert_eq!(state(), before);
    assert_eq!(home.json(&["relay", "list"]), json!([]));
}
