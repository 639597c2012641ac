import { useEffect, useRef, useState } from "react";
import { call, type Message } from "../api";
import { Markdown } from "../lib/markdown";
import { dayLabel, timeOfDay } from "../lib/timeline";
import { jumpTo, update } from "../store";
import { Avatar } from "./Avatar";

export function SearchDialog({ channel }: { channel: string | null }) {
  const [q, setQ] = useState("");
  const [here, setHere] = useState(false);
  const [results, setResults] = useState<Message[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [sel, setSel] = useState(0);
  const seq = useRef(0);
  useEffect(() => {
    const query = q.trim();
    if (!query) {
      setResults(null);
      return;
    }
    const n = ++seq.current;
    const t = setTimeout(() => {
      call("search", { query, limit: 30, ...(here && channel ? { channel } : {}) })
        .then((r) => {
          if (n === seq.current) {
            setResults(r);
            setError(null);
            setSel(0);
          }
        })
        .catch((e: Error) => n === seq.current && setError(e.message));
    }, 120);
    return () => clearTimeout(t);
  }, [q, here, channel]);
  const close = () => update({ dialog: null });
  return (
    <div className="overlay" onMouseDown={close}>
      <div className="search" role="dialog" aria-label="Search messages" onMouseDown={(e) => e.stopPropagation()}>
        <div className="search-input">
          <svg width="18" height="18" viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth={2} aria-hidden>
            <path d="m20 20-4.5-4.5M11 17a6 6 0 1 0 0-12 6 6 0 0 0 0 12Z" />
          </svg>
          <input
            autoFocus
            placeholder="Search messages"
            aria-label="Search query"
            value={q}
            onChange={(e) => setQ(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Escape") close();
              if (!results?.length) return;
              if (e.key === "ArrowDown") setSel((s) => Math.min(s + 1, results.length - 1));
              if (e.key === "ArrowUp") setSel((s) => Math.max(s - 1, 0));
              if (e.key === "Enter") void jumpTo(results[sel]!);
            }}
          />
          <label className="scope">
            <input type="checkbox" checked={here} onChange={(e) => setHere(e.target.checked)} /> this channel
          </label>
        </div>
        <div className="results">
          {error && <div className="empty">{error}</div>}
          {results?.length === 0 && <div className="empty">No messages match “{q.trim()}”.</div>}
          {!results && !error && <div className="empty">Type to search every channel. ↑↓ to choose, Enter to jump.</div>}
          {results?.map((m, i) => (
            <button key={m.id} className={i === sel ? "result sel" : "result"} onMouseEnter={() => setSel(i)} onClick={() => void jumpTo(m)} data-testid="search-result">
              <Avatar name={m.author.name} id={m.author.key} size={28} />
              <div>
                <div className="meta">
                  <b>{m.author.name}</b> <span className="muted">in #{m.channel}{m.thread_root ? " (thread)" : ""} · {dayLabel(m.ts)} {timeOfDay(m.ts)}</span>
                </div>
                <div className="snippet">{m.deleted ? <i>deleted</i> : <Markdown text={m.text.slice(0, 400)} />}</div>
              </div>
            </button>
          ))}
        </div>
      </div>
    </div>
  );
}
