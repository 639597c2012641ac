import { useLayoutEffect, useMemo, useRef, useState } from "react";
import type { Member, Message } from "../api";
import { applyMention, mentionAt, suggest, type MentionQuery } from "../lib/mentions";
import { tooLong } from "../lib/limits";
import { send, typing, update } from "../store";
import { Avatar } from "./Avatar";

const drafts = new Map<string, string>();

interface Props {
  channel: string;
  placeholder: string;
  members: Member[];
  thread?: string;
  /** Messages in this view, newest last (for Up to edit your last one). */
  items: readonly Message[];
  me: string;
}

export function Composer(p: Props) {
  const key = p.thread ? `t:${p.thread}` : p.channel;
  const [text, setText] = useState(() => drafts.get(key) ?? "");
  const [mq, setMq] = useState<MentionQuery | null>(null);
  const [sel, setSel] = useState(0);
  const [sending, setSending] = useState(false);
  const ref = useRef<HTMLTextAreaElement>(null);
  const keyRef = useRef(key);

  if (keyRef.current !== key) {
    drafts.set(keyRef.current, text);
    keyRef.current = key;
    setText(drafts.get(key) ?? "");
    setMq(null);
  }

  useLayoutEffect(() => {
    const t = ref.current;
    if (!t) return;
    t.style.height = "auto";
    t.style.height = `${Math.min(t.scrollHeight, 240)}px`;
  }, [text]);

  useLayoutEffect(() => ref.current?.focus(), [key]);

  const options = useMemo(() => (mq ? suggest(p.members, mq.query) : []), [mq, p.members]);
  const error = tooLong(text);

  const pick = (m: Member) => {
    const t = ref.current;
    if (!t || !mq) return;
    const r = applyMention(text, mq, t.selectionStart, m.name);
    setText(r.text);
    setMq(null);
    requestAnimationFrame(() => t.setSelectionRange(r.caret, r.caret));
  };

  const submit = async () => {
    if (text.trim() === "" || error || sending) return;
    setSending(true);
    const ok = await send(p.channel, text, p.thread);
    setSending(false);
    if (ok) {
      setText("");
      drafts.delete(key);
    }
  };

  const onKeyDown = (e: React.KeyboardEvent<HTMLTextAreaElement>) => {
    if (options.length > 0) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        setSel((s) => (s + (e.key === "ArrowDown" ? 1 : options.length - 1)) % options.length);
        return;
      }
      if (e.key === "Enter" || e.key === "Tab") {
        e.preventDefault();
        pick(options[Math.min(sel, options.length - 1)]!);
        return;
      }
      if (e.key === "Escape") {
        e.preventDefault();
        setMq(null);
        return;
      }
    }
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      void submit();
    } else if (e.key === "ArrowUp" && text === "") {
      const mine = [...p.items].reverse().find((m) => m.author.key === p.me && !m.deleted);
      if (mine) {
        e.preventDefault();
        update({ editing: mine.id });
      }
    }
  };

  return (
    <div className={error ? "composer invalid" : "composer"}>
      {options.length > 0 && (
        <ul className="mentions-popup" role="listbox" aria-label="Mention someone">
          {options.map((m, i) => (
            <li
              key={m.person}
              role="option"
              aria-selected={i === sel}
              className={i === sel ? "sel" : ""}
              onMouseDown={(e) => {
                e.preventDefault();
                pick(m);
              }}
            >
              <Avatar name={m.name} id={m.person} size={20} /> <b>{m.name}</b>
              <span className="muted">{m.role}</span>
            </li>
          ))}
        </ul>
      )}
      <textarea
        ref={ref}
        rows={1}
        value={text}
        placeholder={p.placeholder}
        aria-label={p.placeholder}
        aria-invalid={error ? true : undefined}
        onChange={(e) => {
          setText(e.target.value);
          const q = mentionAt(e.target.value, e.target.selectionStart);
          setMq(q);
          setSel(0);
          if (e.target.value) typing(p.channel);
        }}
        onKeyDown={onKeyDown}
        onBlur={() => setMq(null)}
      />
      <div className="composer-bar">
        <span className="hint">
          <b>Enter</b> to send · <b>Shift+Enter</b> new line · <b>**bold**</b> <i>_italic_</i> <code>`code`</code>
        </span>
        <button className="send" disabled={!text.trim() || !!error || sending} onClick={() => void submit()} aria-label="Send">
          <svg width="16" height="16" viewBox="0 0 24 24" fill="currentColor" aria-hidden>
            <path d="M3 20.5 21 12 3 3.5l2.8 7.3L14 12l-8.2 1.2L3 20.5Z" />
          </svg>
        </button>
      </div>
      {error && (
        <div className="composer-error" role="alert">
          {error}
        </div>
      )}
    </div>
  );
}
