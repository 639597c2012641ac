//! `peer::api` over real nodes on 127.0.0.1: the requests a UI makes, the errors it shows, and
//! the batched events it renders from. Waits are on events with a timeout, never sleeps.

use std::time::Duration;

use peer::api::{Api, ApiError, ApiEvent, Batch, ErrorCode};
use peer::node::NodeConfig;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::common::Home;

const WAIT: Duration = Duration::from_secs(20);

async fn open(home: &Home) -> Api {
    Api::open(NodeConfig {
        db: home.path.clone(),
        bind: "127.0.0.1:0".parse().unwrap(),
        lan: false,
        relay_only: false,
    })
    .await
    .expect("api opens")
}

/// Waits until `api`'s member list names `name` (each change of the list comes with a
/// `members` event on `events`).
async fn until_member(api: &Api, events: &mut broadcast::Receiver<Batch>, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let members = ok(api, json!({"cmd": "members"})).await;
        if members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name)
        {
            return;
        }
        tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}'s profile did not arrive in time"))
            .unwrap();
    }
}

async fn ok(api: &Api, req: Value) -> Value {
    match api.handle_json(req.clone()).await {
        Ok(v) => v,
        Err(e) => panic!("{req} failed: {e:?}"),
    }
}

async fn err(api: &Api, req: Value) -> ApiError {
    match api.handle_json(req.clone()).await {
        Ok(v) => panic!("{req} should fail, answered {v}"),
        Err(e) => e,
    }
}

/// A home with an identity, a workspace `acme` and a channel `general`, through the API.
async fn chat_home(name: &str) -> (Home, Api) {
    let home = Home::new();
    let api = open(&home).await;
    ok(&api, json!({"cmd": "init", "name": name})).await;
    ok(&api, json!({"cmd": "workspace_create", "name": "acme"})).await;
    ok(
        &api,
        json!({"cmd": "channel_create", "name": "general", "topic": "hi"}),
    )
    .await;
    (home, api)
}

/// Waits for batches until `check` has seen what it wants in the events gathered so far.
async fn until_events(
    rx: &mut broadcast::Receiver<Batch>,
    what: &str,
    mut check: impl FnMut(&[ApiEvent]) -> bool,
) -> (Vec<ApiEvent>, usize) {
    let mut seen = Vec::new();
    let mut batches = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check(&seen) {
            return (seen, batches);
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(b)) => {
                batches += 1;
                seen.extend(b.iter().cloned());
            }
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

fn message_texts(events: &[ApiEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ApiEvent::Message { message } => Some(message.text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_home_onboards_and_chats() {
    let home = Home::new();
    let api = open(&home).await;
    assert_eq!(
        ok(&api, json!({"cmd": "whoami"})).await,
        json!({"initialized": false})
    );
    let e = err(&api, json!({"cmd": "channels"})).await;
    assert_eq!(e.code, ErrorCode::NotInitialized);
    let e = err(&api, json!({"cmd": "init", "name": ""})).await;
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");

    let me = ok(&api, json!({"cmd": "init", "name": "alice"})).await;
    assert_eq!(me["initialized"], true);
    assert_eq!(me["name"], "alice");
    let e = err(&api, json!({"cmd": "init", "name": "again"})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);

    let e = err(&api, json!({"cmd": "channels"})).await;
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(e.message, "Create or join a workspace first.");

    let mut events = api.subscribe();
    let ws = ok(&api, json!({"cmd": "workspace_create", "name": "acme"})).await;
    let list = ok(&api, json!({"cmd": "workspaces"})).await;
    assert_eq!(list[0]["id"], ws["id"]);
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[0]["role"], "owner");
    let ch = ok(
        &api,
        json!({"cmd": "channel_create", "name": "#general", "topic": "say hi"}),
    )
    .await;
    assert_eq!(ch["name"], "general");
    assert_eq!(ch["dm"], false);
    assert_eq!(ch["last_ts"], Value::Null);

    let sent = ok(
        &api,
        json!({"cmd": "send", "channel": ch["id"], "text": "hello **world**"}),
    )
    .await;
    assert_eq!(sent["text"], "hello **world**");
    assert_eq!(sent["author"]["name"], "alice");
    assert_eq!(sent["verified"], true);
    let id = sent["id"].as_str().unwrap().to_owned();
    // The send's own message event arrives too (the UI de-duplicates by id).
    until_events(&mut events, "the sent message's event", |evs| {
        evs.iter().any(
            |e| matches!(e, ApiEvent::Message { message } if message.id == id && !message.edited),
        )
    })
    .await;

    let reply = ok(
        &api,
        json!({"cmd": "send", "channel": "general", "text": "in a thread", "thread": id}),
    )
    .await;
    assert_eq!(reply["thread_root"], json!(id));
    let edited = ok(
        &api,
        json!({"cmd": "edit", "id": id, "text": "hello again"}),
    )
    .await;
    assert_eq!(edited["edited"], true);
    let reacted = ok(
        &api,
        json!({"cmd": "react", "id": id, "emoji": "🎉", "on": true}),
    )
    .await;
    assert_eq!(reacted["reactions"], json!({"🎉": ["alice"]}));
    assert_eq!(reacted["reply_count"], 1);
    let page = ok(&api, json!({"cmd": "read", "channel": "general"})).await;
    assert_eq!(page.as_array().unwrap().len(), 1, "thread replies stay out");
    let thread = ok(
        &api,
        json!({"cmd": "read", "channel": "general", "thread": id}),
    )
    .await;
    assert_eq!(thread.as_array().unwrap().len(), 2);
    let found = ok(&api, json!({"cmd": "search", "query": "agai"})).await;
    assert_eq!(found[0]["id"], json!(id));
    let deleted = ok(&api, json!({"cmd": "delete", "id": id})).await;
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        ok(&api, json!({"cmd": "mark_read", "channel": "general"})).await,
        Value::Null
    );

    ok(&api, json!({"cmd": "set_name", "name": "alicia"})).await;
    assert_eq!(ok(&api, json!({"cmd": "whoami"})).await["name"], "alicia");
    let members = ok(&api, json!({"cmd": "members"})).await;
    assert_eq!(members[0]["name"], "alicia");
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[0]["online"], "offline", "nobody is connected");
    let st = ok(&api, json!({"cmd": "status"})).await;
    assert_eq!(
        st,
        json!({"online": false, "peers": [], "relays": [],
               "catching_up": {"done": 0, "total": 0}})
    );
    // Typing with nobody connected reaches nobody, and is no error.
    let t = ok(&api, json!({"cmd": "typing", "channel": "general"})).await;
    assert_eq!(t, json!({"sent_to": 0}));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_a_friendly_sentence() {
    let (_home, api) = chat_home("alice").await;
    let long = "x".repeat(40_001);
    let e = err(
        &api,
        json!({"cmd": "send", "channel": "general", "text": long}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(
        e.message,
        "This message is 40001 characters long; the limit is 40000."
    );
    let e = err(
        &api,
        json!({"cmd": "send", "channel": "general", "text": "  "}),
    )
    .await;
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::BadRequest, "A message cannot be empty.")
    );
    let e = err(&api, json!({"cmd": "join", "ticket": "hello there"})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(
        e.message,
        "Not a Flyt invite ticket (it starts with flyt1)."
    );
    let e = err(&api, json!({"cmd": "join", "ticket": "flyt1notbase58!!"})).await;
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    let e = err(
        &api,
        json!({"cmd": "edit", "id": "01m80tm56j7whvg4gq3kt22kyd", "text": "x"}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(
        e.message,
        "That message does not exist (or has not synced yet)."
    );
    let e = err(&api, json!({"cmd": "react", "id": "!!", "emoji": "👍"})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err(&api, json!({"cmd": "read", "channel": "nope"})).await;
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(e.message, "There is no channel \"nope\" in this workspace.");
    let e = err(&api, json!({"cmd": "channel_create", "name": "general"})).await;
    assert_eq!(e.message, "A channel named #general already exists.");
    let e = err(
        &api,
        json!({"cmd": "member_role", "person": "alice", "role": "king"}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err(&api, json!({"cmd": "invite", "expires_secs": 0})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err(&api, json!({"cmd": "teleport"})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    // Nothing was lost or changed by any of it.
    let page = ok(&api, json!({"cmd": "read", "channel": "general"})).await;
    assert_eq!(page, json!([]));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_whose_inviter_is_gone_is_unavailable() {
    let (_alice_home, alice) = chat_home("alice").await;
    let t = ok(&alice, json!({"cmd": "invite", "expires_secs": 600})).await;
    assert!(t["ticket"].as_str().unwrap().starts_with("flyt1"));
    assert!(t["expires_ts"].as_i64().unwrap() > peer::now_ms());
    alice.shutdown().await;

    let bob_home = Home::new();
    let bob = open(&bob_home).await;
    ok(&bob, json!({"cmd": "init", "name": "bob"})).await;
    let e = err(&bob, json!({"cmd": "join", "ticket": t["ticket"]})).await;
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    assert!(e.message.starts_with("Could not reach"), "{}", e.message);
    // Bob's home is as it was: no workspace.
    assert_eq!(ok(&bob, json!({"cmd": "workspaces"})).await, json!([]));
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_then_a_burst_arrives_in_a_few_batches() {
    let (alice_home, alice) = chat_home("alice").await;
    let t = ok(&alice, json!({"cmd": "invite"})).await;

    let bob_home = Home::new();
    let bob = open(&bob_home).await;
    ok(&bob, json!({"cmd": "init", "name": "bob"})).await;
    let mut bob_events = bob.subscribe();
    let joined = ok(&bob, json!({"cmd": "join", "ticket": t["ticket"]})).await;
    let ws = ok(&alice, json!({"cmd": "workspaces"})).await[0]["id"].clone();
    assert_eq!(joined["workspace"], ws);
    let list = ok(&bob, json!({"cmd": "workspaces"})).await;
    assert_eq!(list[0]["current"], true);
    until_events(&mut bob_events, "a connected status", |evs| {
        evs.iter()
            .any(|e| matches!(e, ApiEvent::Status(s) if s.online && s.peers[0].connected))
    })
    .await;
    // Alice sees bob among the members once his profile arrives.
    let mut alice_events = alice.subscribe();
    until_member(&alice, &mut alice_events, "bob").await;

    // 1,000 messages written at once on alice's home (by another process, as `flyt` would)
    // reach bob as a handful of batches, every one of them as a message event; alice's own UI
    // is told to refresh the channel, since her process did not project them.
    let mut bob_events = bob.subscribe();
    let ch: crdt_model::DocId = ok(&alice, json!({"cmd": "channels"})).await[0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = peer::now_ms();
    let burst: Vec<(i64, String)> = (0..1_000)
        .map(|i| (now + i, format!("burst {i}")))
        .collect();
    let started = tokio::time::Instant::now();
    alice_home.open().post_batch(ch, &burst).unwrap();
    let (seen, batches) = until_events(&mut bob_events, "all 1,000 messages", |evs| {
        message_texts(evs)
            .iter()
            .filter(|t| t.starts_with("burst"))
            .count()
            >= 1_000
    })
    .await;
    let elapsed = started.elapsed();
    assert!(message_texts(&seen).contains(&"burst 999".to_owned()));
    assert!(batches <= 20, "{batches} batches for one burst of 1,000");
    let most = elapsed.as_millis() / peer::api::BATCH_INTERVAL.as_millis() + 1;
    assert!(
        batches as u128 <= most,
        "{batches} batches in {elapsed:?}: more than one per 16 ms"
    );
    until_events(&mut alice_events, "a refresh of #general at alice", |evs| {
        evs.iter()
            .any(|e| matches!(e, ApiEvent::Refresh { channel: Some(c) } if *c == ch.to_string()))
    })
    .await;
    let page = ok(
        &bob,
        json!({"cmd": "read", "channel": "general", "limit": 5}),
    )
    .await;
    assert_eq!(page[4]["text"], "burst 999");
    assert_eq!(page[4]["author"]["name"], "alice");
    let chans = ok(&bob, json!({"cmd": "channels"})).await;
    assert_eq!(chans[0]["unread"], 1_000);
    assert_eq!(chans[0]["last_ts"], now + 999);
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn open_home_creates_a_private_home_that_onboards() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("new/home");
    let api = Api::open_home(&home, "127.0.0.1:0".parse().unwrap(), false, false)
        .await
        .expect("a fresh home opens");
    assert_eq!(
        ok(&api, json!({"cmd": "whoami"})).await["initialized"],
        false
    );
    ok(&api, json!({"cmd": "init", "name": "ann"})).await;
    assert!(peer::home::db_path(&home).is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
    api.shutdown().await;
}

#[tokio::test]
async fn open_home_on_a_file_says_which_folder_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("home");
    std::fs::write(&file, "not a folder").unwrap();
    let e = Api::open_home(&file, "127.0.0.1:0".parse().unwrap(), false, false)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("cannot create its folder"), "{e:?}");
    assert!(e.message.contains(&file.display().to_string()), "{e:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
}

#[tokio::test]
async fn next_batch_turns_a_lag_into_a_refresh_and_ends_when_the_api_does() {
    let (tx, mut rx) = broadcast::channel::<Batch>(1);
    let one: Batch = std::sync::Arc::new(vec![ApiEvent::Channels]);
    let two: Batch = std::sync::Arc::new(vec![ApiEvent::Members]);
    tx.send(one).unwrap();
    tx.send(two.clone()).unwrap();
    // The first batch was overwritten: the subscriber is told to refetch everything.
    let lagged = peer::api::next_batch(&mut rx).await.unwrap();
    assert_eq!(*lagged, *peer::api::lagged_batch());
    assert_eq!(*peer::api::next_batch(&mut rx).await.unwrap(), *two);
    drop(tx);
    assert!(peer::api::next_batch(&mut rx).await.is_none());
}

/// Alice (owner of `acme`, with `#general`) and bob, who joined by ticket; both know each
/// other's names.
async fn alice_and_bob() -> ((Home, Api), (Home, Api)) {
    let (alice_home, alice) = chat_home("alice").await;
    let t = ok(&alice, json!({"cmd": "invite"})).await;
    let bob_home = Home::new();
    let bob = open(&bob_home).await;
    ok(&bob, json!({"cmd": "init", "name": "bob"})).await;
    let mut alice_events = alice.subscribe();
    ok(&bob, json!({"cmd": "join", "ticket": t["ticket"]})).await;
    until_member(&alice, &mut alice_events, "bob").await;
    ((alice_home, alice), (bob_home, bob))
}

fn person(me: &Value) -> String {
    me["person"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_between_two_nodes_is_one_conversation_listed_as_a_dm() {
    let ((_ah, alice), (_bh, bob)) = alice_and_bob().await;
    let a = person(&ok(&alice, json!({"cmd": "whoami"})).await);
    let b = person(&ok(&bob, json!({"cmd": "whoami"})).await);
    let mut bob_events = bob.subscribe();

    // Alice opens it by bob's key, as the UI does.
    let dm = ok(&alice, json!({"cmd": "dm", "people": [b]})).await;
    assert_eq!(dm["dm"], true);
    assert_eq!(dm["private"], true);
    assert_eq!(dm["name"], "@bob");
    let mut members: Vec<(String, String)> = dm["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["person"].as_str().unwrap().into(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        vec![
            ("alice".to_owned(), a.clone()),
            ("bob".to_owned(), b.clone())
        ]
    );
    let id = dm["id"].as_str().unwrap().to_owned();
    // Opening it again (by name this time) is the same conversation.
    assert_eq!(
        ok(&alice, json!({"cmd": "dm", "people": ["bob"]})).await["id"],
        json!(id)
    );

    let sent = ok(
        &alice,
        json!({"cmd": "send", "channel": id, "text": "psst, bob"}),
    )
    .await;
    assert_eq!(sent["channel_id"], json!(id));
    // It arrives on bob's node as a message event of that DM.
    until_events(&mut bob_events, "alice's DM at bob", |evs| {
        evs.iter().any(|e| {
            matches!(e, ApiEvent::Message { message }
                if message.text == "psst, bob" && message.channel_id == id && message.verified)
        })
    })
    .await;
    let listed = ok(&bob, json!({"cmd": "channels"})).await;
    let at_bob = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == json!(id))
        .expect("the DM is in bob's list")
        .clone();
    assert_eq!(at_bob["dm"], true);
    assert_eq!(at_bob["name"], "@alice");
    assert_eq!(at_bob["unread"], 1);
    assert_eq!(at_bob["members"].as_array().unwrap().len(), 2);
    // Public channels list no members; alice's list has the DM too.
    let general = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "general")
        .unwrap();
    assert_eq!(
        (general["dm"].clone(), general["members"].clone()),
        (json!(false), json!([]))
    );
    let at_alice = ok(&alice, json!({"cmd": "channels"})).await;
    assert!(
        at_alice
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == json!(id) && c["dm"] == true)
    );

    // Bob answers in the same DM, opened from his side by alice's name.
    let back = ok(&bob, json!({"cmd": "dm", "people": ["alice"]})).await;
    assert_eq!(back["id"], json!(id));
    let read = ok(&bob, json!({"cmd": "read", "channel": id})).await;
    assert_eq!(read[0]["text"], "psst, bob");
    assert_eq!(read[0]["author"]["name"], "alice");

    // Bad input: nobody, or someone who is not a member.
    let e = err(&alice, json!({"cmd": "dm", "people": []})).await;
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            ErrorCode::BadRequest,
            "Pick at least one person to message."
        )
    );
    let e = err(&alice, json!({"cmd": "dm", "people": ["mallory"]})).await;
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(
        e.message,
        "There is no member \"mallory\" in this workspace."
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_link_ticket_links_a_fresh_home_listed_in_devices() {
    let (_ah, alice) = chat_home("alice").await;
    let me = ok(&alice, json!({"cmd": "whoami"})).await;
    assert_eq!(
        ok(&alice, json!({"cmd": "devices"})).await,
        json!([{"device": me["device"], "this": true, "connected": false}])
    );
    let e = err(&alice, json!({"cmd": "device_link", "expires_secs": 0})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    let t = ok(&alice, json!({"cmd": "device_link"})).await;
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    assert!(ticket.starts_with("flytdev1"), "{ticket}");
    let expires = t["expires_ts"].as_i64().unwrap();
    let now = peer::now_ms();
    assert!(
        expires > now + 590_000 && expires <= now + 600_000,
        "{expires}"
    );

    // The ticket works: a fresh home (as the app's onboarding does) becomes alice's second
    // device, with her workspace, and shows in her list of devices.
    let laptop = Home::new();
    let second = open(&laptop).await;
    let e = err(
        &second,
        json!({"cmd": "device_join", "ticket": "flyt1nope"}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    let me2 = ok(&second, json!({"cmd": "device_join", "ticket": ticket})).await;
    assert_eq!(me2["initialized"], true);
    assert_eq!(me2["name"], "alice");
    assert_eq!(me2["person"], me["person"]);
    assert_ne!(me2["device"], me["device"]);
    let ws = ok(&second, json!({"cmd": "workspaces"})).await;
    assert_eq!(ws[0]["name"], "acme");
    assert_eq!(ws[0]["current"], true);
    let e = err(&second, json!({"cmd": "device_join", "ticket": ticket})).await;
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            ErrorCode::BadRequest,
            "This Flyt is already set up for alice."
        )
    );
    let mut events = alice.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = ok(&alice, json!({"cmd": "devices"})).await;
        let other = list
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == me2["device"])
            .cloned();
        if let Some(d) = other
            && d["connected"] == true
        {
            assert_eq!(d["this"], false);
            assert_eq!(list.as_array().unwrap().len(), 2);
            break;
        }
        tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the new device connects")
            .unwrap();
    }
    // The ticket was for one device only.
    let third_home = Home::new();
    let third = open(&third_home).await;
    let e = err(&third, json!({"cmd": "device_join", "ticket": ticket})).await;
    assert_eq!(e.code, ErrorCode::NotAllowed, "{e:?}");
    assert_eq!(
        ok(&third, json!({"cmd": "whoami"})).await["initialized"],
        false
    );
    third.shutdown().await;
    second.shutdown().await;
    alice.shutdown().await;
}

/// A real HTTP server on loopback that is not a Flyt relay: answers every request with a page.
fn not_a_relay() -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0; 4096];
            let _ = s.read(&mut buf);
            let body = "<html>hello</html>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_does_not_answer_or_is_not_a_relay_is_refused_and_nothing_recorded() {
    let ((alice_home, alice), (_bh, bob)) = alice_and_bob().await;
    assert_eq!(ok(&alice, json!({"cmd": "relays"})).await, json!([]));
    let ws: crdt_model::DocId = ok(&alice, json!({"cmd": "workspaces"})).await[0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let before = alice_home.open().workspace_save(ws).unwrap();

    // Port 1 on loopback: nothing listens there.
    let e = err(
        &alice,
        json!({"cmd": "relay_add", "url": "http://127.0.0.1:1/"}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    assert_eq!(
        e.message,
        "Nothing answered at http://127.0.0.1:1; check the address and that the relay is running."
    );
    let web = not_a_relay();
    let e = err(&alice, json!({"cmd": "relay_add", "url": web})).await;
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    assert_eq!(
        e.message,
        format!("{web} answered, but it is not a Flyt relay.")
    );
    for url in [
        "relay.example.com:8787",
        "ftp://relay.example",
        "https://relay.example",
        "",
    ] {
        let e = err(&alice, json!({"cmd": "relay_add", "url": url})).await;
        assert_eq!(e.code, ErrorCode::BadRequest, "{url}: {e:?}");
        assert!(e.message.contains("http://"), "{url}: {}", e.message);
    }
    // A member may not add one: refused before any address is tried.
    let e = err(
        &bob,
        json!({"cmd": "relay_add", "url": "http://127.0.0.1:1"}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotAllowed, "{e:?}");
    assert_eq!(e.message, "Only owners and admins add or remove relays.");
    let e = err(
        &alice,
        json!({"cmd": "relay_remove", "url": "http://127.0.0.1:1"}),
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    assert_eq!(
        e.message,
        "This workspace has no relay \"http://127.0.0.1:1\"."
    );

    // Nothing was recorded: no relay listed, the workspace document unchanged.
    assert_eq!(ok(&alice, json!({"cmd": "relays"})).await, json!([]));
    assert_eq!(ok(&bob, json!({"cmd": "relays"})).await, json!([]));
    assert_eq!(alice_home.open().workspace_save(ws).unwrap(), before);
    assert_eq!(
        ok(&alice, json!({"cmd": "status"})).await["relays"],
        json!([])
    );
    alice.shutdown().await;
    bob.shutdown().await;
}
