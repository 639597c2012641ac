import { useVirtualizer } from "@tanstack/react-virtual";
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";
import type { Message, Presence } from "../api";
import { afterPaint } from "../lib/perf";
import { buildRows } from "../lib/timeline";
import { loadOlder, update } from "../store";
import { MessageItem } from "./MessageItem";

interface Props {
  channel: string;
  items: Message[];
  hasMore: boolean;
  loading: boolean;
  me: string;
  myName: string;
  canModerate: boolean;
  editing: string | null;
  focus: string | null;
  presence: Record<string, Presence>;
  threads: Record<string, Message[]>;
  header: React.ReactNode;
}

/** Pixels from the bottom within which the list follows new messages. */
const STICKY = 80;

export function MessageList(p: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const rows = useMemo(() => buildRows(p.items), [p.items]);
  // Row 0 is the channel's beginning (or a loading row) so history has a top.
  const count = rows.length + 1;
  const estimate = (i: number) => {
    if (i === 0) return 120;
    const r = rows[i - 1];
    return r?.kind === "day" ? 44 : r?.kind === "msg" && r.grouped ? 28 : 60;
  };
  const atBottom = useRef(true);
  const v = useVirtualizer({
    count,
    getScrollElement: () => scroller.current,
    estimateSize: estimate,
    getItemKey: (i) => (i === 0 ? "top" : rows[i - 1]!.key),
    overscan: 8,
    // A chat opens at its newest message: start the first render at the bottom rather
    // than rendering the top and scrolling down.
    initialOffset: () => {
      let total = 0;
      for (let i = 0; i < count; i++) total += estimate(i);
      // The list's own height is not known before it mounts; the window's bounds it.
      return Math.max(0, total - window.innerHeight);
    },
    // Rows measured taller than estimated must not push the newest message off screen.
    onChange: (inst) => {
      const el = scroller.current;
      if (el && atBottom.current && !inst.isScrolling) el.scrollTop = el.scrollHeight;
    },
  });

  const [away, setAway] = useState(false);
  const first = p.items[0]?.id;
  const last = p.items[p.items.length - 1]?.id;
  const prevFirst = useRef<string | undefined>(undefined);
  const prevTotal = useRef(0);
  const prevChannel = useRef<string | null>(null);

  // Keep the reader's place: at the bottom follow new messages; when older history is
  // prepended, shift by what was added above.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const total = v.getTotalSize();
    if (prevChannel.current !== p.channel) {
      prevChannel.current = p.channel;
      atBottom.current = true;
      v.scrollToIndex(count - 1, { align: "end" });
    } else if (prevFirst.current !== first && prevFirst.current !== undefined && !atBottom.current) {
      el.scrollTop += total - prevTotal.current;
    } else if (atBottom.current) {
      v.scrollToIndex(count - 1, { align: "end" });
    }
    prevFirst.current = first;
    prevTotal.current = total;
  }, [p.channel, first, last, count, v]);

  // After a paint of a channel's newest screen, record how long opening took.
  useEffect(() => {
    if (p.items.length === 0) return;
    afterPaint(() => {
      if (performance.getEntriesByName("flyt:open:start", "mark").length) {
        performance.measure("flyt:open", "flyt:open:start");
        performance.clearMarks("flyt:open:start");
      }
    });
  }, [p.channel, p.items.length]);

  // Jump to a message (search result) and flash it.
  useEffect(() => {
    if (!p.focus) return;
    const i = rows.findIndex((r) => r.key === p.focus);
    if (i === -1) return;
    atBottom.current = false;
    v.scrollToIndex(i + 1, { align: "center" });
    const t = setTimeout(() => update({ focus: null }), 2500);
    return () => clearTimeout(t);
  }, [p.focus, rows, v]);

  // The window or a side panel resized the list: stay at the newest message if we were there.
  useEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const ro = new ResizeObserver(() => {
      if (atBottom.current) el.scrollTop = el.scrollHeight;
    });
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    const fromBottom = el.scrollHeight - el.scrollTop - el.clientHeight;
    atBottom.current = fromBottom < STICKY;
    setAway(fromBottom > 2 * el.clientHeight);
    if (el.scrollTop < 600 && p.hasMore && !p.loading) void loadOlder(p.channel);
  };

  // A short first page on a tall window: fetch more until the screen is full.
  useEffect(() => {
    const el = scroller.current;
    if (el && p.hasMore && !p.loading && el.scrollHeight <= el.clientHeight + 600 && p.items.length > 0)
      void loadOlder(p.channel);
  }, [p.items.length, p.hasMore, p.loading, p.channel]);

  const items = v.getVirtualItems();
  return (
    <div className="list-wrap">
    {away && (
      <button
        className="jump-newest"
        onClick={() => {
          atBottom.current = true;
          v.scrollToIndex(count - 1, { align: "end" });
        }}
      >
        ↓ Jump to newest
      </button>
    )}
    <div className="scroller" ref={scroller} onScroll={onScroll} data-testid="message-list">
      <div style={{ height: v.getTotalSize(), position: "relative" }}>
        {items.map((vi) => {
          const row = vi.index === 0 ? null : rows[vi.index - 1]!;
          return (
            <div
              key={vi.key}
              data-index={vi.index}
              ref={v.measureElement}
              className="vrow"
              style={{ transform: `translateY(${vi.start}px)` }}
            >
              {row === null ? (
                p.hasMore || p.loading ? (
                  <div className="history-loading">{p.loading ? "Loading earlier messages…" : ""}</div>
                ) : (
                  p.header
                )
              ) : row.kind === "day" ? (
                <div className="day">
                  <span>{row.label}</span>
                </div>
              ) : (
                <MessageItem
                  message={row.message}
                  grouped={row.grouped}
                  me={p.me}
                  myName={p.myName}
                  canModerate={p.canModerate}
                  editing={p.editing === row.message.id}
                  focused={p.focus === row.message.id}
                  presence={p.presence[row.message.author.key]}
                  loadedReplies={p.threads[row.message.id]?.length}
                />
              )}
            </div>
          );
        })}
      </div>
    </div>
    </div>
  );
}
