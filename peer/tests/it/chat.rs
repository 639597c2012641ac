//! The everyday flow: post, read, edit, react, threads, delete, search, unread, mentions.

use std::collections::BTreeMap;

use crdt_model::MessageId;

use crate::common::*;

fn reactions(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(e, who)| (e.to_string(), who.iter().map(|w| w.to_string()).collect()))
        .collect()
}

#[test]
fn chat_flow() {
    let home = Home::new();
    let mut s = home.open();
    let me = s.init(NAME).unwrap().person_id().to_string();
    let ws = s.create_workspace("acme").unwrap();
    assert_eq!(s.current_workspace().unwrap(), Some(ws));
    let wss = s.workspaces().unwrap();
    assert_eq!(wss.len(), 1);
    assert_eq!(
        (
            wss[0].name.as_str(),
            wss[0].role.as_str(),
            wss[0].members,
            wss[0].current
        ),
        ("acme", "owner", 1, true)
    );
    let members = s.members().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].name.as_str(), members[0].key.as_str()),
        (NAME, me.as_str())
    );

    let ch = s.create_channel("general", "everything", false).unwrap();
    let random = s.create_channel("#random", "", true).unwrap();
    assert_eq!(s.find_channel("general").unwrap(), ch);
    assert_eq!(s.find_channel("#general").unwrap(), ch);
    assert_eq!(s.find_channel("random").unwrap(), random);
    let chans = s.channels().unwrap();
    let names: Vec<_> = chans
        .iter()
        .map(|c| (c.name.as_str(), c.topic.as_str(), c.private))
        .collect();
    assert_eq!(
        names,
        [("general", "everything", false), ("random", "", true)]
    );
    assert!(s.read(ch, 50, None, None).unwrap().is_empty());

    // Post and read back.
    let mut posted = Vec::new();
    for i in 0..10 {
        let m = s
            .post(ch, &format!("message number {i}"), None, None)
            .unwrap();
        assert_eq!(m.text, format!("message number {i}"));
        assert_eq!(
            (m.author.name.as_str(), m.author.key.as_str()),
            (NAME, me.as_str())
        );
        assert_eq!(
            (m.channel.as_str(), m.channel_id.as_str()),
            ("general", ch.to_string().as_str())
        );
        assert!(!m.edited && !m.deleted && m.verified && m.reply_count == 0);
        assert!(m.reactions.is_empty() && m.mentions.is_empty());
        posted.push(m);
    }
    let expected = in_display_order(posted.clone());
    let all = timeline(&s, ch);
    assert_eq!(
        all, expected,
        "the timeline shows every message, oldest first"
    );
    // Newest N, oldest first.
    let newest = s.read(ch, 4, None, None).unwrap();
    assert_eq!(ids(&newest), ids(&expected[6..]));
    // Paging back with `before` walks the whole history exactly once.
    let mut pages = vec![newest];
    loop {
        let oldest = pages.last().unwrap()[0].id.clone();
        let page = s.read(ch, 4, Some(&oldest), None).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        pages.push(page);
    }
    assert_eq!(pages.len(), 3);
    let walked: Vec<String> = pages.iter().rev().flat_map(|p| ids(p)).collect();
    assert_eq!(walked, ids(&expected));
    // A unique id prefix finds the message.
    assert_eq!(s.message(&posted[2].id[..12]).unwrap(), posted[2]);

    // Edit.
    let e = s
        .edit(&posted[3].id, "message number three, edited")
        .unwrap();
    assert_eq!(e.text, "message number three, edited");
    assert!(e.edited && e.edited_ts.is_some_and(|t| t >= posted[3].ts));
    assert_eq!((e.id.as_str(), e.ts), (posted[3].id.as_str(), posted[3].ts));
    assert_eq!(s.message(&posted[3].id).unwrap(), e);
    assert!(timeline(&s, ch).contains(&e));

    // React and unreact.
    let id = &posted[4].id;
    let r = s.react(id, "👍", true).unwrap();
    assert_eq!(r.reactions, reactions(&[("👍", &[NAME])]));
    let r = s.react(id, "🎉", true).unwrap();
    assert_eq!(r.reactions, reactions(&[("🎉", &[NAME]), ("👍", &[NAME])]));
    let r = s.react(id, "👍", true).unwrap();
    assert_eq!(r.reactions.len(), 2, "reacting twice counts once");
    assert_eq!(r.reactions["👍"], [NAME]);
    let r = s.react(id, "👍", false).unwrap();
    assert_eq!(r.reactions, reactions(&[("🎉", &[NAME])]));
    assert_eq!(
        s.message(id).unwrap().reactions,
        reactions(&[("🎉", &[NAME])])
    );

    // Threads: a reply to a reply hangs off the root.
    let root = posted[5].clone();
    let r1 = s
        .post(ch, "first reply", None, Some(root.id.parse().unwrap()))
        .unwrap();
    assert_eq!(r1.thread_root.as_deref(), Some(root.id.as_str()));
    let r2 = s
        .post(ch, "second reply", None, Some(r1.id.parse().unwrap()))
        .unwrap();
    assert_eq!(r2.thread_root.as_deref(), Some(root.id.as_str()));
    assert_eq!(s.message(&root.id).unwrap().reply_count, 2);
    let thread = s.read(ch, 50, None, Some(&root.id)).unwrap();
    let mut want = vec![root.id.clone()];
    want.extend(ids(&in_display_order(vec![r1.clone(), r2.clone()])));
    assert_eq!(
        ids(&thread),
        want,
        "a thread reads as its root then its replies"
    );
    assert_eq!(thread[0].reply_count, 2);
    assert_eq!(
        s.read(ch, 50, None, Some(&r2.id)).unwrap(),
        thread,
        "any reply opens the thread"
    );
    let short = s.read(ch, 1, None, Some(&root.id)).unwrap();
    assert_eq!(
        ids(&short),
        [want[0].clone(), want[2].clone()],
        "root and the newest reply"
    );
    let main = timeline(&s, ch);
    assert_eq!(main.len(), 10, "replies stay out of the main timeline");
    assert!(main.iter().all(|m| m.thread_root.is_none()));
    assert_eq!(
        main.iter().find(|m| m.id == root.id).unwrap().reply_count,
        2
    );

    // reply_to: a quote, shown in the main timeline.
    let quoted: MessageId = posted[0].id.parse().unwrap();
    let q = s.post(ch, "quoting you", Some(quoted), None).unwrap();
    assert_eq!(q.reply_to.as_deref(), Some(posted[0].id.as_str()));
    assert!(q.thread_root.is_none());
    assert_eq!(timeline(&s, ch).last().unwrap(), &q);

    // Delete: the text is gone, a tombstone stays, reactions go with it.
    s.react(&posted[1].id, "👍", true).unwrap();
    let d = s.delete(&posted[1].id).unwrap();
    assert!(d.deleted);
    assert_eq!(d.text, "");
    assert!(d.reactions.is_empty());
    let shown = timeline(&s, ch);
    assert_eq!(shown.iter().find(|m| m.id == posted[1].id), Some(&d));
    assert_eq!(shown.len(), 11);

    // Search.
    s.post(random, "number in another channel", None, None)
        .unwrap();
    let hits = s.search("number", None, 50).unwrap();
    assert_eq!(
        hits.len(),
        10,
        "9 live messages in #general and 1 in #random"
    );
    assert!(
        hits.windows(2)
            .all(|w| (w[0].ts, &w[0].id) >= (w[1].ts, &w[1].id)),
        "newest first"
    );
    assert!(hits.iter().all(|m| !m.deleted));
    assert_eq!(s.search("number", Some(ch), 50).unwrap().len(), 9);
    assert_eq!(s.search("number", Some(random), 50).unwrap().len(), 1);
    assert_eq!(s.search("number", None, 3).unwrap().len(), 3);
    assert_eq!(
        s.search("numb", Some(ch), 50).unwrap().len(),
        9,
        "the last word is a prefix"
    );
    assert_eq!(s.search("message numb", Some(ch), 50).unwrap().len(), 9);
    assert_eq!(
        s.search("MESSAGE Number", Some(ch), 50).unwrap().len(),
        9,
        "case-insensitive"
    );
    assert!(
        s.search("mess number", Some(ch), 50).unwrap().is_empty(),
        "only the last word is a prefix"
    );
    let three = s.search("three", None, 50).unwrap();
    assert_eq!(
        ids(&three),
        [posted[3].id.clone()],
        "the edited text is found"
    );
    assert!(
        s.search("3", None, 50).unwrap().is_empty(),
        "the text before the edit is not"
    );
    assert!(
        s.search("1", None, 50).unwrap().is_empty(),
        "deleted messages are not found"
    );
    assert_eq!(
        ids(&s.search("reply", None, 50).unwrap()).len(),
        2,
        "thread replies are found"
    );
    for q in [
        "\"",
        "\"number",
        "foo OR bar",
        "number OR",
        "AND",
        "NEAR(",
        "*",
        "a\"b",
        "col:umn",
        "-x",
    ] {
        assert!(
            s.search(q, None, 50).is_ok(),
            "search {q:?} is not an error"
        );
    }
    assert_eq!(s.search("\"number\"", Some(ch), 50).unwrap().len(), 9);
    assert!(s.search("   ", None, 50).unwrap().is_empty());
    assert!(s.search("", None, 50).unwrap().is_empty());

    // Unread: my own messages are never unread.
    let unread: Vec<_> = s
        .channels()
        .unwrap()
        .iter()
        .map(|c| (c.unread, c.mentions))
        .collect();
    assert_eq!(unread, [(0, 0), (0, 0)]);
    s.mark_read(ch).unwrap();
    s.mark_read(random).unwrap();
    s.mark_read(ch).unwrap();
    let unread: Vec<_> = s
        .channels()
        .unwrap()
        .iter()
        .map(|c| (c.unread, c.mentions))
        .collect();
    assert_eq!(unread, [(0, 0), (0, 0)]);

    // Mentions resolve to member names, case-insensitively; unknown names are not mentions.
    let m = s.post(ch, &format!("hi @{NAME}"), None, None).unwrap();
    assert_eq!(m.mentions, [NAME]);
    let m2 = s
        .post(
            ch,
            &format!("hey @{} and @nobody", NAME.to_uppercase()),
            None,
            None,
        )
        .unwrap();
    assert_eq!(m2.mentions, [NAME]);
    let m3 = s
        .post(ch, "email me at x@alice.com or `@alice`", None, None)
        .unwrap();
    assert!(m3.mentions.is_empty());
    let m3 = s.edit(&m3.id, &format!("now @{NAME}")).unwrap();
    assert_eq!(m3.mentions, [NAME], "an edit updates mentions");
    assert_eq!(s.message(&m.id).unwrap().mentions, [NAME]);
    assert_eq!(
        s.channels().unwrap()[0].mentions,
        0,
        "mentioning myself is not a notification"
    );

    // Everything survives closing and reopening.
    let before: Vec<_> = [ch, random].iter().map(|c| timeline(&s, *c)).collect();
    let thread_before = s.read(ch, 50, None, Some(&root.id)).unwrap();
    drop(s);
    let s = home.open();
    assert_eq!(s.identity().unwrap().person_id().to_string(), me);
    assert_eq!(s.current_workspace().unwrap(), Some(ws));
    let after: Vec<_> = [ch, random].iter().map(|c| timeline(&s, *c)).collect();
    assert_eq!(before, after);
    assert_eq!(s.read(ch, 50, None, Some(&root.id)).unwrap(), thread_before);
    assert_fts_consistent(&home.path);
}
