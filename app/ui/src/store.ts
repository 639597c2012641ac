// The UI's state and every action that changes it. State lives in this module (so actions
// always see the latest), React renders it through one subscription in `useChat`, and event
// batches from the node are applied in one update as a transition.

import { startTransition, useEffect, useState } from "react";
import {
  ApiError,
  call,
  subscribe,
  unsupported,
  type Channel,
  type Event,
  type Member,
  type Message,
  type Presence,
  type Status,
  type Whoami,
  type Workspace,
} from "./api";
import { mergeMessages, reduceBatch } from "./lib/messages";

export const PAGE = 50;
/** Older history comes in larger pages: each page that arrives while scrolling back costs a
 *  frame or two (merge, rows, re-measure), so fewer, larger pages drop fewer frames. */
export const OLDER_PAGE = 200;
/** How long a typing notice stays up without a repeat. */
const TYPING_MS = 5000;

export interface ChannelMessages {
  items: Message[];
  hasMore: boolean;
  loading: boolean;
}

export interface Toast {
  id: number;
  text: string;
  kind: "error" | "info";
}

export type Dialog =
  | null
  | "search"
  | "channel"
  | "invite"
  | "members"
  | "settings"
  | "dm"
  | "workspace";

export type Theme = "system" | "light" | "dark";

export interface State {
  booted: boolean;
  me: Whoami | null;
  workspaces: Workspace[];
  channels: Channel[];
  members: Member[];
  status: Status | null;
  current: string | null;
  byChannel: Record<string, ChannelMessages>;
  threadRoot: Message | null;
  threads: Record<string, Message[]>;
  typing: Record<string, Record<string, { name: string; until: number }>>;
  presence: Record<string, Presence>;
  toasts: Toast[];
  dialog: Dialog;
  /** A message to scroll to and highlight once it is on screen. */
  focus: string | null;
  /** The message being edited in place. */
  editing: string | null;
  theme: Theme;
  stream: boolean;
}

let state: State = {
  booted: false,
  me: null,
  workspaces: [],
  channels: [],
  members: [],
  status: null,
  current: null,
  byChannel: {},
  threadRoot: null,
  threads: {},
  typing: {},
  presence: {},
  toasts: [],
  dialog: null,
  focus: null,
  editing: null,
  theme: (localStorage.getItem("flyt.theme") as Theme | null) ?? "system",
  stream: true,
};

const listeners = new Set<(urgent: boolean) => void>();

export function getState(): State {
  return state;
}

/** Updates the state; `urgent` renders at once (user input), else as a transition. */
export function update(patch: Partial<State> | ((s: State) => Partial<State>), urgent = true) {
  const p = typeof patch === "function" ? patch(state) : patch;
  state = { ...state, ...p };
  for (const l of listeners) l(urgent);
}

/** The state, re-rendered on every change. Used once, at the root. */
export function useChat(): State {
  const [s, set] = useState(state);
  useEffect(() => {
    const l = (urgent: boolean) => {
      const next = state;
      if (urgent) set(next);
      else startTransition(() => set(next));
    };
    listeners.add(l);
    set(state);
    return () => void listeners.delete(l);
  }, []);
  return s;
}

let toastId = 0;
export function toast(text: string, kind: Toast["kind"] = "error") {
  const id = ++toastId;
  update((s) => ({ toasts: [...s.toasts, { id, text, kind }] }));
  setTimeout(() => update((s) => ({ toasts: s.toasts.filter((t) => t.id !== id) })), 6000);
}

/** Runs `f`, showing an `ApiError`'s sentence as a toast; returns undefined on failure. */
export async function attempt<T>(f: () => Promise<T>): Promise<T | undefined> {
  try {
    return await f();
  } catch (e) {
    toast(e instanceof ApiError ? e.message : String(e));
    return undefined;
  }
}

export function setTheme(theme: Theme) {
  localStorage.setItem("flyt.theme", theme);
  update({ theme });
  applyTheme();
}

const systemDark = window.matchMedia("(prefers-color-scheme: dark)");
/** Sets `data-theme` on <html> from the chosen theme or, for "system", the system's. */
export function applyTheme() {
  const dark = state.theme === "dark" || (state.theme === "system" && systemDark.matches);
  document.documentElement.setAttribute("data-theme", dark ? "dark" : "light");
}
systemDark.addEventListener("change", applyTheme);

// ---- loading -------------------------------------------------------------------------------

export async function boot() {
  let me: Whoami;
  try {
    me = await call("whoami");
  } catch (e) {
    update({ booted: true });
    toast(e instanceof ApiError ? e.message : String(e));
    return;
  }
  update({ me });
  if (me.initialized) await loadWorkspace();
  update({ booted: true });
}

/** Loads the current workspace's lists and opens a channel. */
export async function loadWorkspace() {
  // All three at once (one round trip less on start); without a workspace the last two fail.
  const [workspaces, ch, mb] = await Promise.all([
    call("workspaces"),
    call("channels").catch(() => null),
    call("members").catch(() => null),
  ]);
  update({ workspaces });
  if (!workspaces.some((w) => w.current)) return;
  const [channels, members] = await Promise.all([ch ?? call("channels"), mb ?? call("members")]);
  update({ channels, members, byChannel: {}, threads: {}, threadRoot: null });
  void refreshStatus();
  const keep = channels.find((c) => c.id === state.current);
  const first = keep ?? channels.find((c) => c.name === "general") ?? channels[0];
  if (first) await openChannel(first.id);
  else update({ current: null });
}

export async function refreshStatus() {
  const status = await call("status").catch(() => null);
  if (status) update({ status }, false);
}

async function refreshChannels() {
  const channels = await call("channels").catch(() => null);
  if (channels) update({ channels }, false);
}

async function refreshMembers() {
  const members = await call("members").catch(() => null);
  if (members) update({ members }, false);
}

async function refreshWorkspaces() {
  const workspaces = await call("workspaces").catch(() => null);
  if (workspaces) update({ workspaces }, false);
}

function setChannel(id: string, patch: Partial<ChannelMessages>) {
  update((s) => {
    const old = s.byChannel[id] ?? { items: [], hasMore: true, loading: false };
    return { byChannel: { ...s.byChannel, [id]: { ...old, ...patch } } };
  });
}

export async function openChannel(id: string) {
  performance.mark("flyt:open:start");
  update({ current: id, threadRoot: state.threadRoot?.channel_id === id ? state.threadRoot : null });
  const have = state.byChannel[id];
  if (!have) {
    setChannel(id, { loading: true });
    const items = await attempt(() => call("read", { channel: id, limit: PAGE }));
    setChannel(id, {
      items: mergeMessages(state.byChannel[id]?.items ?? [], items ?? []),
      hasMore: (items?.length ?? 0) >= PAGE,
      loading: false,
    });
  }
  void markRead(id);
}

/** Fetches the page before the oldest loaded message; resolves false when there is none. */
export async function loadOlder(id: string): Promise<boolean> {
  const have = state.byChannel[id];
  if (!have || have.loading || !have.hasMore) return false;
  const oldest = have.items[0];
  setChannel(id, { loading: true });
  const items = await attempt(() =>
    call("read", { channel: id, limit: OLDER_PAGE, ...(oldest ? { before: oldest.id } : {}) }),
  );
  const now = state.byChannel[id] ?? have;
  setChannel(id, {
    items: mergeMessages(now.items, items ?? []),
    hasMore: items !== undefined && items.length >= OLDER_PAGE,
    loading: false,
  });
  return (items?.length ?? 0) > 0;
}

const readTimers = new Map<string, ReturnType<typeof setTimeout>>();
export async function markRead(id: string) {
  const ch = state.channels.find((c) => c.id === id);
  if (ch && ch.unread === 0 && ch.mentions === 0) return;
  clearTimeout(readTimers.get(id));
  // Read up to what is on screen now: a message arriving during the debounce stays unread.
  const seen = state.byChannel[id]?.items.filter((m) => !m.thread_root).at(-1)?.id;
  readTimers.set(
    id,
    setTimeout(() => {
      readTimers.delete(id);
      update((s) => ({
        channels: s.channels.map((c) => (c.id === id ? { ...c, unread: 0, mentions: 0 } : c)),
      }));
      void call("mark_read", seen ? { channel: id, up_to: seen } : { channel: id })
        // The mark may stop short of the newest (up_to): the server has the true counts.
        .then(() => Promise.all([refreshChannels(), refreshWorkspaces()]))
        .catch(() => undefined);
    }, 300),
  );
}

// ---- messages ------------------------------------------------------------------------------

/** Puts messages (from a result or an event) wherever they are shown. */
export function applyMessages(msgs: readonly Message[], urgent = true) {
  if (msgs.length === 0) return;
  update((s) => {
    const byChannel = { ...s.byChannel };
    const threads = { ...s.threads };
    let threadRoot = s.threadRoot;
    const top = new Map<string, Message[]>();
    const replies = new Map<string, Message[]>();
    for (const m of msgs) {
      if (threadRoot && m.id === threadRoot.id) threadRoot = m;
      if (m.thread_root) {
        const l = replies.get(m.thread_root) ?? [];
        l.push(m);
        replies.set(m.thread_root, l);
      } else {
        const l = top.get(m.channel_id) ?? [];
        l.push(m);
        top.set(m.channel_id, l);
      }
    }
    for (const [ch, l] of top) {
      const have = byChannel[ch];
      if (have) byChannel[ch] = { ...have, items: mergeMessages(have.items, l) };
    }
    for (const [root, l] of replies) {
      const have = threads[root];
      if (have) threads[root] = mergeMessages(have, l);
    }
    return { byChannel, threads, threadRoot };
  }, urgent);
}

export async function send(channel: string, text: string, thread?: string): Promise<boolean> {
  const m = await attempt(() =>
    call("send", { channel, text, ...(thread ? { thread } : {}) }),
  );
  if (!m) return false;
  performance.mark("flyt:sent");
  applyMessages([m]);
  return true;
}

export async function edit(id: string, text: string): Promise<boolean> {
  const m = await attempt(() => call("edit", { id, text }));
  if (m) applyMessages([m]);
  return m !== undefined;
}

export async function remove(id: string) {
  const m = await attempt(() => call("delete", { id }));
  if (m) applyMessages([m]);
}

export async function react(m: Message, emoji: string) {
  const mine = state.me?.name;
  const on = !(m.reactions[emoji] ?? []).includes(mine ?? "");
  const r = await attempt(() => call("react", { id: m.id, emoji, on }));
  if (r) applyMessages([r]);
}

export async function openThread(root: Message) {
  update({ threadRoot: root });
  const replies = await readThread(root);
  if (replies) update((s) => ({ threads: { ...s.threads, [root.id]: mergeMessages(s.threads[root.id] ?? [], replies) } }));
}

/** A thread's replies (the backend's thread read starts with the root itself). */
async function readThread(root: Message): Promise<Message[] | undefined> {
  const all = await attempt(() => call("read", { channel: root.channel_id, thread: root.id, limit: 200 }));
  return all?.filter((m) => m.id !== root.id);
}

export function closeThread() {
  update({ threadRoot: null });
}

/** Opens `m`'s channel (and thread) and scrolls to it, loading older pages until it is there. */
export async function jumpTo(m: Message) {
  update({ dialog: null });
  await openChannel(m.channel_id);
  const target = m.thread_root ?? m.id;
  let found: Message | undefined;
  for (let pages = 0; pages < 200; pages++) {
    found = (state.byChannel[m.channel_id]?.items ?? []).find((x) => x.id === target);
    if (found || !(await loadOlder(m.channel_id))) break;
  }
  if (m.thread_root && found) await openThread(found);
  update({ focus: m.thread_root && !found ? null : m.id });
}

// ---- events --------------------------------------------------------------------------------

/** Whether `m` is already on a list (an update, not an arrival). */
function known(m: Message): boolean {
  const list = m.thread_root ? state.threads[m.thread_root] : state.byChannel[m.channel_id]?.items;
  return !list || list.some((x) => x.id === m.id);
}

/** Re-reads the newest page of loaded channels after events were lost. */
async function refreshMessages(which: Set<string>) {
  const ids = Object.keys(state.byChannel).filter((id) => which.has("*") || which.has(id));
  for (const id of ids) {
    const items = await call("read", { channel: id, limit: PAGE }).catch(() => null);
    if (items) applyMessages(items, false);
  }
  const root = state.threadRoot;
  if (root && (which.has("*") || which.has(root.channel_id))) {
    const replies = await readThread(root).catch(() => null);
    if (replies) update((s) => ({ threads: { ...s.threads, [root.id]: mergeMessages(s.threads[root.id] ?? [], replies) } }), false);
  }
}

let lastPaintMark = 0;
function handleBatch(events: Event[]) {
  lastPaintMark++;
  const r = reduceBatch(events);
  for (const m of r.messages) if (!known(m)) performance.mark(`flyt:event:${m.id}`);
  const now = Date.now();
  if (r.messages.length) applyMessages(r.messages, false);
  if (r.channels) void refreshChannels().then(() => {
    const cur = state.current;
    const ch = state.channels.find((c) => c.id === cur);
    if (cur && ch && ch.unread > 0 && document.visibilityState === "visible") void markRead(cur);
  });
  if (r.channels) void refreshWorkspaces();
  if (r.members) void refreshMembers();
  if (r.status) update({ status: r.status }, false);
  if (r.refresh.size) void refreshMessages(r.refresh);
  if (r.typing.length || r.presence.size) {
    update((s) => {
      const typing = { ...s.typing };
      for (const t of r.typing) {
        if (t.person === s.me?.person) continue;
        typing[t.channel] = { ...typing[t.channel], [t.person]: { name: t.name, until: now + TYPING_MS } };
      }
      const presence = { ...s.presence };
      for (const [p, st] of r.presence) presence[p] = st;
      return { typing, presence };
    }, false);
  }
}

/** The number of event batches received so far (the benchmark waits on it). */
export function batchesReceived(): number {
  return lastPaintMark;
}

export function startEvents(): () => void {
  const stop = subscribe(handleBatch);
  const tick = setInterval(() => {
    const now = Date.now();
    const stale = Object.values(state.typing).some((t) => Object.values(t).some((x) => x.until < now));
    if (stale)
      update((s) => {
        const typing: State["typing"] = {};
        for (const [ch, people] of Object.entries(s.typing)) {
          const live = Object.fromEntries(Object.entries(people).filter(([, x]) => x.until >= now));
          if (Object.keys(live).length) typing[ch] = live;
        }
        return { typing };
      }, false);
  }, 1000);
  const status = setInterval(() => void refreshStatus(), 10_000);
  return () => {
    stop();
    clearInterval(tick);
    clearInterval(status);
  };
}

let lastTyping = 0;
let typingSupported = true;
/** Tells peers we are typing, at most every 3 seconds; stops asking a node without it. */
export function typing(channel: string) {
  const now = Date.now();
  if (!typingSupported || now - lastTyping < 3000) return;
  lastTyping = now;
  void call("typing", { channel }).catch((e: unknown) => {
    if (unsupported(e)) typingSupported = false;
  });
}

// ---- workspace and people ------------------------------------------------------------------

export async function init(name: string): Promise<string | null> {
  try {
    const me = await call("init", { name });
    update({ me });
    return null;
  } catch (e) {
    return e instanceof ApiError ? e.message : String(e);
  }
}

/** Makes this fresh home another device of the person whose device-link ticket this is. */
export async function deviceJoin(ticket: string): Promise<string | null> {
  try {
    const me = await call("device_join", { ticket: ticket.trim() });
    update({ me });
    await loadWorkspace();
    return null;
  } catch (e) {
    // A timeout may still have linked the device: show whatever the node now says.
    const me = await call("whoami").catch(() => null);
    if (me?.initialized) {
      update({ me });
      await loadWorkspace().catch(() => undefined);
    }
    return e instanceof ApiError ? e.message : String(e);
  }
}

export async function createWorkspace(name: string): Promise<string | null> {
  try {
    await call("workspace_create", { name });
    const existing = await call("channels");
    if (!existing.some((c) => c.name === "general"))
      await call("channel_create", { name: "general", topic: "Company-wide announcements and chat" });
    await loadWorkspace();
    return null;
  } catch (e) {
    return e instanceof ApiError ? e.message : String(e);
  }
}

export async function join(ticket: string): Promise<string | null> {
  try {
    await call("join", { ticket: ticket.trim() });
    await loadWorkspace();
    return null;
  } catch (e) {
    return e instanceof ApiError ? e.message : String(e);
  }
}

export async function useWorkspace(id: string) {
  await attempt(async () => {
    await call("workspace_use", { id });
    update({ current: null });
    await loadWorkspace();
  });
}

export async function createChannel(name: string, topic: string, priv: boolean): Promise<string | null> {
  try {
    const ch = await call("channel_create", { name, ...(topic ? { topic } : {}), private: priv });
    update((s) => ({ channels: [...s.channels.filter((c) => c.id !== ch.id), ch] }));
    await openChannel(ch.id);
    return null;
  } catch (e) {
    return e instanceof ApiError ? e.message : String(e);
  }
}

/** Opens (creating if new) the conversation with these people (person keys). */
export async function openDm(people: string[]): Promise<string | null> {
  try {
    const ch = await call("dm", { people });
    update((s) => ({ channels: [...s.channels.filter((c) => c.id !== ch.id), ch], dialog: null }));
    await openChannel(ch.id);
    return null;
  } catch (e) {
    return e instanceof ApiError ? e.message : String(e);
  }
}

export async function setName(name: string): Promise<boolean> {
  const ok = await attempt(() => call("set_name", { name }));
  if (ok === undefined) return false;
  update((s) => ({ me: s.me ? { ...s.me, name } : s.me }));
  void refreshMembers();
  return true;
}

export async function removeMember(person: string) {
  if ((await attempt(() => call("member_remove", { person }))) !== undefined) void refreshMembers();
}

export async function setRole(person: string, role: string) {
  if ((await attempt(() => call("member_role", { person, role }))) !== undefined) void refreshMembers();
}
