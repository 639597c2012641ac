//! Every refused action says why and leaves the database exactly as it was.

use crdt_model::{DocId, MAX_TEXT_CHARS, MessageId, ModelError};
use peer::StoreError;

use crate::common::*;

#[test]
fn no_identity_and_init_twice() {
    let home = Home::new();
    let mut s = home.open();
    let mut other = home.open();
    let empty = dump_everything(&home.path);
    assert!(matches!(s.identity(), Err(StoreError::NoIdentity)));
    assert!(matches!(
        s.create_workspace("acme"),
        Err(StoreError::NoIdentity)
    ));
    assert!(matches!(s.channels(), Err(StoreError::NoWorkspace)));
    assert!(matches!(
        s.create_channel("general", "", false),
        Err(StoreError::NoWorkspace)
    ));
    assert!(matches!(
        s.init(""),
        Err(StoreError::Model(ModelError::BadName(_)))
    ));
    assert_same(
        &empty,
        &dump_everything(&home.path),
        "refused calls before init",
    );

    let me = s.init(NAME).unwrap().person_id();
    let after_init = dump_everything(&home.path);
    assert!(matches!(s.init("bob"), Err(StoreError::AlreadyInitialized(n)) if n == NAME));
    // A second handle opened before `init` must not create a second identity either.
    assert!(matches!(
        other.init("bob"),
        Err(StoreError::AlreadyInitialized(_))
    ));
    assert_same(&after_init, &dump_everything(&home.path), "init twice");
    let reopened = home.open();
    assert_eq!(reopened.identity().unwrap().person_id(), me);
    assert_eq!(reopened.identity().unwrap().name, NAME);
    assert!(matches!(reopened.channels(), Err(StoreError::NoWorkspace)));
}

#[test]
fn errors_change_nothing() {
    let (home, mut s, ch) = setup();
    let random = s.create_channel("random", "", false).unwrap();
    let m = s.post(ch, "keep me", None, None).unwrap();
    let other = s.post(random, "over here", None, None).unwrap();
    let unknown = MessageId::new(1_700_000_000_000, [7; 10]).to_string();
    let unknown_id: MessageId = unknown.parse().unwrap();
    let too_long = "x".repeat(MAX_TEXT_CHARS + 1);

    let snapshot = |s: &peer::Store| {
        (
            dump_everything(&home.path),
            timeline(s, ch),
            timeline(s, random),
        )
    };
    let before = snapshot(&s);

    macro_rules! refused {
        ($before:expr, $call:expr, $pat:pat) => {{
            let before = &$before;
            let r = $call;
            assert!(matches!(r, Err($pat)), "{}: got {:?}", stringify!($call), r);
            let now = snapshot(&s);
            assert_same(&before.0, &now.0, stringify!($call));
            assert_eq!(
                (&before.1, &before.2),
                (&now.1, &now.2),
                "{}",
                stringify!($call)
            );
        }};
    }

    // Bad channel names and duplicates.
    refused!(
        before,
        s.create_channel("has space", "", false),
        StoreError::Model(ModelError::BadName(_))
    );
    refused!(
        before,
        s.create_channel("", "", false),
        StoreError::Model(ModelError::BadName(_))
    );
    refused!(
        before,
        s.create_channel("#", "", false),
        StoreError::Model(ModelError::BadName(_))
    );
    refused!(
        before,
        s.create_channel("tab\there", "", false),
        StoreError::Model(ModelError::BadName(_))
    );
    refused!(
        before,
        s.create_channel(&"x".repeat(81), "", false),
        StoreError::Model(ModelError::BadName(_))
    );
    refused!(
        before,
        s.create_channel("general", "", false),
        StoreError::ChannelExists(_)
    );
    refused!(
        before,
        s.create_channel("#general", "", false),
        StoreError::ChannelExists(_)
    );
    refused!(
        before,
        s.create_channel("General", "", false),
        StoreError::ChannelExists(_)
    );
    refused!(
        before,
        s.find_channel("nope"),
        StoreError::UnknownChannel(_)
    );
    refused!(
        before,
        s.create_workspace(""),
        StoreError::Model(ModelError::BadName(_))
    );

    // Bad text.
    refused!(
        before,
        s.post(ch, "", None, None),
        StoreError::Model(ModelError::EmptyText)
    );
    refused!(
        before,
        s.post(ch, "  \n\t ", None, None),
        StoreError::Model(ModelError::EmptyText)
    );
    refused!(
        before,
        s.post(ch, &too_long, None, None),
        StoreError::Model(ModelError::TextTooLong(40_001))
    );
    refused!(
        before,
        s.edit(&m.id, ""),
        StoreError::Model(ModelError::EmptyText)
    );
    refused!(
        before,
        s.edit(&m.id, " "),
        StoreError::Model(ModelError::EmptyText)
    );
    refused!(
        before,
        s.edit(&m.id, &too_long),
        StoreError::Model(ModelError::TextTooLong(_))
    );
    refused!(
        before,
        s.post_batch(ch, &[(1_000, "fine".into()), (2_000, " ".into())]),
        StoreError::Model(ModelError::EmptyText)
    );

    // Unknown and malformed ids, unknown channels.
    refused!(
        before,
        s.edit(&unknown, "new text"),
        StoreError::UnknownMessage(_)
    );
    refused!(
        before,
        s.edit("not-an-id!", "new text"),
        StoreError::Model(ModelError::BadId(_))
    );
    refused!(before, s.delete(&unknown), StoreError::UnknownMessage(_));
    refused!(
        before,
        s.delete("not-an-id!"),
        StoreError::Model(ModelError::BadId(_))
    );
    refused!(
        before,
        s.react(&unknown, "👍", true),
        StoreError::UnknownMessage(_)
    );
    refused!(
        before,
        s.react("zzzz", "👍", true),
        StoreError::UnknownMessage(_)
    );
    refused!(
        before,
        s.post(ch, "hi", Some(unknown_id), None),
        StoreError::UnknownMessage(_)
    );
    refused!(
        before,
        s.post(ch, "hi", None, Some(unknown_id)),
        StoreError::UnknownMessage(_)
    );
    // A thread lives in one channel.
    refused!(
        before,
        s.post(ch, "hi", None, Some(other.id.parse().unwrap())),
        StoreError::UnknownMessage(_)
    );
    refused!(
        before,
        s.post(DocId([9; 16]), "hi", None, None),
        StoreError::UnknownChannel(_)
    );
    refused!(
        before,
        s.post_batch(DocId([9; 16]), &[(1_000, "hi".into())]),
        StoreError::UnknownChannel(_)
    );
    refused!(
        before,
        s.read(ch, 10, Some("not-an-id!"), None),
        StoreError::Model(ModelError::BadId(_))
    );
    refused!(
        before,
        s.read(ch, 10, None, Some(&unknown)),
        StoreError::UnknownMessage(_)
    );
    refused!(
        before,
        s.read(random, 10, None, Some(&m.id)),
        StoreError::UnknownMessage(_)
    );

    // Bad reactions.
    refused!(
        before,
        s.react(&m.id, "", true),
        StoreError::Model(ModelError::BadEmoji(_))
    );
    refused!(
        before,
        s.react(&m.id, "thumbs up", true),
        StoreError::Model(ModelError::BadEmoji(_))
    );
    refused!(
        before,
        s.react(&m.id, &"x".repeat(65), true),
        StoreError::Model(ModelError::BadEmoji(_))
    );

    // The limit is characters, inclusive: exactly 40,000 is fine, multi-byte or not.
    let max = "x".repeat(MAX_TEXT_CHARS);
    let big = s.post(ch, &max, None, None).unwrap();
    assert_eq!(big.text, max);
    let wide = "é".repeat(MAX_TEXT_CHARS);
    let big2 = s.post(ch, &wide, None, None).unwrap();
    assert_eq!(big2.text.chars().count(), MAX_TEXT_CHARS);
    assert_eq!(timeline(&s, ch).len(), 3);
    assert_eq!(s.edit(&m.id, &max).unwrap().text, max);

    // After a delete, edits, reactions and a second delete are refused and change nothing.
    s.edit(&m.id, "keep me").unwrap();
    s.react(&m.id, "👍", true).unwrap();
    s.delete(&m.id).unwrap();
    let before = snapshot(&s);
    refused!(
        before,
        s.edit(&m.id, "back from the dead"),
        StoreError::Model(ModelError::Deleted(_))
    );
    refused!(
        before,
        s.react(&m.id, "👍", true),
        StoreError::Model(ModelError::Deleted(_))
    );
    refused!(
        before,
        s.react(&m.id, "👍", false),
        StoreError::Model(ModelError::Deleted(_))
    );
    refused!(
        before,
        s.delete(&m.id),
        StoreError::Model(ModelError::Deleted(_))
    );
    assert!(s.search("keep", None, 10).unwrap().is_empty());

    // The refusals left the store working: the next writes land.
    let next = s.post(ch, "still here", None, None).unwrap();
    let next = s.edit(&next.id, "still here, edited").unwrap();
    assert_eq!(s.react(&next.id, "👍", true).unwrap().reactions.len(), 1);
    assert_eq!(
        timeline(&s, ch).last().unwrap(),
        &s.message(&next.id).unwrap()
    );
    assert_eq!(timeline(&s, ch).len(), 4);
    let reopened = home.open();
    assert_eq!(timeline(&reopened, ch), timeline(&s, ch));
}
