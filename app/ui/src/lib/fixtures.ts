// Test data shared by the unit tests.

import type { Message } from "../api";

let n = 0;
/** A message with sensible defaults; ids count up so they sort by creation. */
export function msg(p: Partial<Message> & { ts: number }): Message {
  n++;
  return {
    id: p.id ?? `m${String(n).padStart(4, "0")}`,
    channel: "general",
    channel_id: "c1",
    author: p.author ?? { name: "alice", key: "ka" },
    text: "hi",
    edited: false,
    edited_ts: null,
    deleted: false,
    reactions: {},
    reply_to: null,
    thread_root: null,
    reply_count: 0,
    mentions: [],
    verified: true,
    ...p,
  };
}

