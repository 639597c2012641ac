// Keeping message lists right while events arrive: lists are ordered like the backend's pages
// (by timestamp, then id), a message is stored once per id (a local send shows from the
// `send` result, and its later event only replaces it), and a batch of events collapses to
// the latest version of each message and the set of things to refetch.

import type { Event, Message, Presence, Status } from "../api";

export function compareMessages(a: Message, b: Message): number {
  return a.ts - b.ts || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** `list` with `incoming` merged in by id, still ordered; `list` itself if nothing changed. */
export function mergeMessages(list: readonly Message[], incoming: readonly Message[]): Message[] {
  if (incoming.length === 0) return list as Message[];
  const index = new Map<string, number>();
  list.forEach((m, i) => index.set(m.id, i));
  let out: Message[] | null = null;
  const added: Message[] = [];
  const seen = new Map<string, number>();
  for (const m of incoming) {
    const at = index.get(m.id);
    if (at !== undefined) {
      out ??= list.slice();
      out[at] = m;
    } else if (seen.has(m.id)) {
      added[seen.get(m.id)!] = m;
    } else {
      seen.set(m.id, added.length);
      added.push(m);
    }
  }
  if (added.length === 0) return out ?? (list as Message[]);
  const base = out ?? list.slice();
  const last = base[base.length - 1];
  added.sort(compareMessages);
  const merged = base.concat(added);
  // Usually new messages are the newest; only an out-of-order arrival needs a full sort.
  if (last && compareMessages(added[0]!, last) < 0) merged.sort(compareMessages);
  return merged;
}

export interface Typing {
  channel: string;
  person: string;
  name: string;
}

/** What one batch of events asks the UI to do. */
export interface Reduced {
  /** The latest version of each message in the batch, in arrival order. */
  messages: Message[];
  channels: boolean;
  members: boolean;
  status: Status | null;
  typing: Typing[];
  presence: Map<string, Presence>;
  /** Channels whose loaded messages must be re-read; "*" for all. */
  refresh: Set<string>;
}

export function reduceBatch(events: readonly Event[]): Reduced {
  const byId = new Map<string, Message>();
  const r: Reduced = {
    messages: [],
    channels: false,
    members: false,
    status: null,
    typing: [],
    presence: new Map(),
    refresh: new Set(),
  };
  for (const e of events) {
    switch (e.type) {
      case "message":
        byId.delete(e.message.id);
        byId.set(e.message.id, e.message);
        break;
      case "channels":
        r.channels = true;
        break;
      case "members":
        r.members = true;
        break;
      case "status": {
        const { type: _type, ...status } = e;
        r.status = status;
        break;
      }
      case "typing":
        r.typing.push({ channel: e.channel, person: e.person, name: e.name });
        break;
      case "presence":
        r.presence.set(e.person, e.state);
        break;
      case "refresh":
        r.refresh.add(e.channel ?? "*");
        break;
    }
  }
  r.messages = [...byId.values()];
  return r;
}
