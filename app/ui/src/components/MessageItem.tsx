import { memo, useCallback, useLayoutEffect, useRef, useState } from "react";
import type { Message, Presence } from "../api";
import { Markdown } from "../lib/markdown";
import { afterPaint } from "../lib/perf";
import { fullTime, shortTime, timeOfDay } from "../lib/timeline";
import { edit, openThread, react, remove, update } from "../store";
import { Avatar } from "./Avatar";
import { EmojiPicker } from "./EmojiPicker";

const QUICK = ["👍", "🎉", "👀"];

interface Props {
  message: Message;
  grouped: boolean;
  me: string;
  myName: string;
  canModerate: boolean;
  editing: boolean;
  focused: boolean;
  presence: Presence | undefined;
  inThread?: boolean;
  /** Replies loaded in the thread panel (counted even before the root's own update). */
  loadedReplies?: number;
}

function EditBox({ message }: { message: Message }) {
  const [text, setText] = useState(message.text);
  const ref = useRef<HTMLTextAreaElement>(null);
  useLayoutEffect(() => {
    const t = ref.current;
    if (t) {
      t.focus();
      t.setSelectionRange(t.value.length, t.value.length);
    }
  }, []);
  const done = () => update({ editing: null });
  const save = async () => {
    if (text.trim() === "" || text === message.text) return done();
    if (await edit(message.id, text)) done();
  };
  return (
    <div className="edit-box">
      <textarea
        ref={ref}
        value={text}
        rows={Math.min(8, text.split("\n").length)}
        onChange={(e) => setText(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey) {
            e.preventDefault();
            void save();
          } else if (e.key === "Escape") done();
        }}
        aria-label="Edit message"
      />
      <div className="edit-hint">
        escape to <button onClick={done}>cancel</button> · enter to <button onClick={() => void save()}>save</button>
      </div>
    </div>
  );
}

function MessageItemImpl(p: Props) {
  const m = p.message;
  const [picking, setPicking] = useState(false);
  const mine = m.author.key === p.me;
  const replies = Math.max(m.reply_count, p.loadedReplies ?? 0);
  const isMe = useCallback((n: string) => n.toLowerCase() === p.myName.toLowerCase(), [p.myName]);
  // The backend lists mentions by person key or by name, depending on its version.
  const mentionsMe = m.mentions.some((x) => x === p.me || isMe(x));
  const cls = [
    "msg",
    p.grouped ? "grouped" : "",
    m.verified ? "" : "unverified",
    mentionsMe ? "mentions-me" : "",
    p.focused ? "focused" : "",
    picking ? "active" : "",
  ].join(" ");
  useLayoutEffect(() => measureArrival(m.id), [m.id]);
  const reactions = Object.entries(m.reactions).filter(([, who]) => who.length > 0);
  return (
    <div className={cls} data-id={m.id} data-testid="message">
      <div className="gutter">
        {p.grouped ? (
          <time className="hover-time" dateTime={new Date(m.ts).toISOString()}>
            {shortTime(m.ts)}
          </time>
        ) : (
          <Avatar name={m.author.name} id={m.author.key} presence={p.presence} />
        )}
      </div>
      <div className="body">
        {!p.grouped && (
          <div className="meta">
            <span className="author">{m.author.name}</span>
            {!m.verified && (
              <span className="badge warn" title="The signature on this message did not check out: it may not be from who it says.">
                unverified
              </span>
            )}
            <time dateTime={new Date(m.ts).toISOString()} title={fullTime(m.ts)}>
              {timeOfDay(m.ts)}
            </time>
          </div>
        )}
        {p.grouped && !m.verified && <span className="badge warn">unverified</span>}
        {m.deleted ? (
          <div className="deleted">This message was deleted.</div>
        ) : p.editing ? (
          <EditBox message={m} />
        ) : (
          <div className="text">
            <Markdown text={m.text} isMe={isMe} />
            {m.edited && (
              <span className="edited" title={m.edited_ts ? fullTime(m.edited_ts) : undefined}>
                (edited)
              </span>
            )}
          </div>
        )}
        {!m.deleted && reactions.length > 0 && (
          <div className="reactions">
            {reactions.map(([emoji, who]) => (
              <button
                key={emoji}
                className={who.includes(p.myName) ? "reaction on" : "reaction"}
                title={who.join(", ")}
                onClick={() => void react(m, emoji)}
                aria-label={`${emoji} ${who.length}`}
              >
                <span>{emoji}</span> <b>{who.length}</b>
              </button>
            ))}
            <button className="reaction add" onClick={() => setPicking(true)} aria-label="Add reaction">
              ＋
            </button>
          </div>
        )}
        {!p.inThread && replies > 0 && (
          <button className="thread-link" onClick={() => void openThread(m)}>
            {replies} {replies === 1 ? "reply" : "replies"}
          </button>
        )}
      </div>
      {!m.deleted && !p.editing && (
        <div className="actions" role="toolbar" aria-label="Message actions">
          {QUICK.map((e) => (
            <button key={e} onClick={() => void react(m, e)} title={`React ${e}`} aria-label={`React ${e}`}>
              {e}
            </button>
          ))}
          <button onClick={() => setPicking(true)} title="Add reaction" aria-label="Add reaction">
            <Icon d="M12 21a9 9 0 1 1 0-18 9 9 0 0 1 0 18Zm-3.5-7.5a4 4 0 0 0 7 0M9 9.5h.01M15 9.5h.01" />
          </button>
          {!p.inThread && (
            <button onClick={() => void openThread(m)} title="Reply in thread" aria-label="Reply in thread">
              <Icon d="M4 5h16v10H9l-5 4V5Z" />
            </button>
          )}
          {mine && (
            <button onClick={() => update({ editing: m.id })} title="Edit" aria-label="Edit">
              <Icon d="m4 20 4-1 11-11-3-3L5 16l-1 4Zm10-13 3 3" />
            </button>
          )}
          {(mine || p.canModerate) && (
            <button
              className="danger"
              onClick={() => {
                if (window.confirm("Delete this message for everyone?")) void remove(m.id);
              }}
              title="Delete"
              aria-label="Delete"
            >
              <Icon d="M5 7h14M10 7V4h4v3m-7 0 1 13h8l1-13" />
            </button>
          )}
        </div>
      )}
      {picking && (
        <EmojiPicker
          onPick={(e) => {
            setPicking(false);
            void react(m, e);
          }}
          onClose={() => setPicking(false)}
        />
      )}
    </div>
  );
}

export const MessageItem = memo(MessageItemImpl);

/** For a message that came in an event: how long from the event to on screen (the benchmark
 * reads these measures: `flyt:incoming` at commit, `flyt:incoming:paint` after the paint). */
function measureArrival(id: string) {
  const mark = `flyt:event:${id}`;
  if (performance.getEntriesByName(mark, "mark").length === 0) return;
  performance.measure("flyt:incoming", mark);
  afterPaint(() => {
    performance.measure("flyt:incoming:paint", mark);
    performance.clearMarks(mark);
  });
}

export function Icon({ d, size = 16 }: { d: string; size?: number }) {
  return (
    <svg width={size} height={size} viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth={1.8} strokeLinecap="round" strokeLinejoin="round" aria-hidden>
      <path d={d} />
    </svg>
  );
}
