// The only module that knows how the UI talks to its node: the Tauri command `api` and the
// event `flyt://events` inside the desktop app, else `POST /api` and Server-Sent Events from
// `flyt serve --ui` (token in the URL fragment). Everything else calls `call` and `subscribe`.

export interface Author {
  name: string;
  key: string;
}

export interface Message {
  id: string;
  channel: string;
  channel_id: string;
  author: Author;
  ts: number;
  text: string;
  edited: boolean;
  edited_ts: number | null;
  deleted: boolean;
  reactions: Record<string, string[]>;
  reply_to: string | null;
  thread_root: string | null;
  reply_count: number;
  mentions: string[];
  verified: boolean;
}

export interface Whoami {
  initialized: boolean;
  name?: string;
  person?: string;
  device?: string;
}

export interface Workspace {
  id: string;
  name: string;
  current: boolean;
  role: string;
  unread: number;
  mentions: number;
}

/** Someone in a DM or private channel. */
export interface ChannelMember {
  person: string;
  name: string;
}

export interface Channel {
  id: string;
  /** A DM's is `@` and the other people's names; show `members` without me instead. */
  name: string;
  topic: string | null;
  private: boolean;
  dm: boolean;
  /** Who is in a DM or private channel, me included; empty for public channels. */
  members: ChannelMember[];
  unread: number;
  mentions: number;
  last_ts: number | null;
}

export type Presence = "online" | "away" | "offline";

export interface Member {
  person: string;
  name: string;
  role: string;
  online?: Presence;
}

export interface PeerStatus {
  device: string;
  name?: string;
  docs_synced: number;
  connected: boolean;
}

export interface Status {
  online: boolean;
  peers: PeerStatus[];
  relays: string[];
  catching_up?: { done: number; total: number } | null;
}

export interface Invite {
  ticket: string;
  expires_ts: number;
}

/** A relay of the current workspace. */
export interface Relay {
  id: string;
  url: string;
  addrs: string[];
  /** Display name of who added it. */
  added_by: string;
  added_ts: number;
  /** This node is connected to it right now. */
  connected: boolean;
}

/** One of my devices. */
export interface Device {
  device: string;
  /** The device this app runs on. */
  this: boolean;
  /** Connected to this node right now. */
  connected: boolean;
}

export type Event =
  | { type: "message"; message: Message }
  | { type: "channels" }
  | { type: "members" }
  | ({ type: "status" } & Status)
  | { type: "typing"; channel: string; person: string; name: string }
  | { type: "presence"; person: string; state: Presence }
  /** Events were lost (the stream lagged): re-read `channel`, or everything. */
  | { type: "refresh"; channel?: string };

/** Every request the UI makes, with the type of its result. */
export interface Requests {
  whoami: [{}, Whoami];
  init: [{ name: string }, Whoami];
  device_join: [{ ticket: string }, Whoami];
  workspaces: [{}, Workspace[]];
  workspace_create: [{ name: string }, { id: string }];
  workspace_use: [{ id: string }, null];
  join: [{ ticket: string }, { workspace: string }];
  channels: [{}, Channel[]];
  channel_create: [{ name: string; topic?: string; private?: boolean }, Channel];
  read: [{ channel: string; limit?: number; before?: string; thread?: string }, Message[]];
  send: [{ channel: string; text: string; reply_to?: string; thread?: string }, Message];
  edit: [{ id: string; text: string }, Message];
  delete: [{ id: string }, Message];
  react: [{ id: string; emoji: string; on: boolean }, Message];
  search: [{ query: string; channel?: string; limit?: number }, Message[]];
  mark_read: [{ channel: string; up_to?: string }, null];
  members: [{}, Member[]];
  member_role: [{ person: string; role: string }, null];
  member_remove: [{ person: string }, null];
  invite: [{ expires_secs?: number; role?: string }, Invite];
  set_name: [{ name: string }, null];
  status: [{}, Status];
  typing: [{ channel: string }, { sent_to: number }];
  dm: [{ people: string[] }, Channel];
  relays: [{}, Relay[]];
  relay_add: [{ url: string }, Relay];
  relay_remove: [{ url: string }, { relay_told: boolean }];
  devices: [{}, Device[]];
  device_link: [{ expires_secs?: number }, Invite];
}

export type Cmd = keyof Requests;

/** A failed request: one of the contract's stable codes and a sentence to show as is. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** Whether `e` says the node does not have this request at all (an older or smaller backend). */
export function unsupported(e: unknown): boolean {
  return e instanceof ApiError && e.code === "bad_request" && /does not know the request/i.test(e.message);
}

interface Transport {
  call(req: object): Promise<unknown>;
  subscribe(onBatch: (events: Event[]) => void): () => void;
}

function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e && typeof e === "object") {
    const o = e as { code?: unknown; message?: unknown; error?: unknown };
    if (o.error && typeof o.error === "object") return toApiError(o.error);
    if (typeof o.code === "string" && typeof o.message === "string")
      return new ApiError(o.code, o.message);
    if (typeof o.message === "string") return new ApiError("internal", o.message);
  }
  if (typeof e === "string") return new ApiError("internal", e);
  return new ApiError("unavailable", "Flyt's node did not answer. Is it still running?");
}

function tauriTransport(): Transport {
  return {
    async call(req) {
      const { invoke } = await import("@tauri-apps/api/core");
      try {
        return await invoke("api", { req });
      } catch (e) {
        throw toApiError(e);
      }
    },
    subscribe(onBatch) {
      let stop: (() => void) | null = null;
      let cancelled = false;
      void import("@tauri-apps/api/event").then(({ listen }) =>
        listen<Event[] | Event>("flyt://events", (e) => {
          onBatch(Array.isArray(e.payload) ? e.payload : [e.payload]);
        }).then((unlisten) => {
          if (cancelled) unlisten();
          else stop = unlisten;
        }),
      );
      return () => {
        cancelled = true;
        stop?.();
      };
    },
  };
}

function httpTransport(token: string): Transport {
  return {
    async call(req) {
      let res: Response;
      try {
        res = await fetch("/api", {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
          body: JSON.stringify(req),
        });
      } catch {
        throw new ApiError("unavailable", "Flyt's node did not answer. Is it still running?");
      }
      let body: unknown = null;
      try {
        body = await res.json();
      } catch {
        throw new ApiError("internal", `The node answered ${res.status} without a readable body.`);
      }
      const b = body as { ok?: unknown; error?: unknown };
      if (res.ok && b && "ok" in b) return b.ok;
      throw toApiError(b?.error ?? body);
    },
    subscribe(onBatch) {
      const source = new EventSource(`/events?token=${encodeURIComponent(token)}`);
      source.onmessage = (e: MessageEvent<string>) => {
        try {
          const data = JSON.parse(e.data) as Event[] | Event;
          onBatch(Array.isArray(data) ? data : [data]);
        } catch {
          // A malformed batch is dropped; the next refetch repairs whatever it carried.
        }
      };
      source.onerror = () => onConnection?.(false);
      source.onopen = () => onConnection?.(true);
      return () => source.close();
    },
  };
}

/** The token `flyt serve --ui` put in the URL fragment (`#token=...`). */
export function tokenFromHash(hash: string): string {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  return params.get("token") ?? "";
}

let onConnection: ((up: boolean) => void) | null = null;

/** Tell `listener` when the event stream drops or comes back (browser build only). */
export function onEventStream(listener: (up: boolean) => void): void {
  onConnection = listener;
}

let transport: Transport | null = null;
function current(): Transport {
  if (!transport) {
    transport =
      "__TAURI_INTERNALS__" in window
        ? tauriTransport()
        : httpTransport(tokenFromHash(window.location.hash));
  }
  return transport;
}

/** Send one request to the node. Rejects with an `ApiError`. */
export async function call<C extends Cmd>(
  cmd: C,
  args: Requests[C][0] = {} as Requests[C][0],
): Promise<Requests[C][1]> {
  try {
    return (await current().call({ cmd, ...args })) as Requests[C][1];
  } catch (e) {
    throw toApiError(e);
  }
}

/** Receive the node's event batches until the returned function is called. */
export function subscribe(onBatch: (events: Event[]) => void): () => void {
  return current().subscribe(onBatch);
}
