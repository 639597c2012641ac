import { describe, expect, it } from "vitest";
import type { Status } from "../api";
import { tooLong } from "./limits";
import { syncLine } from "./status";

const peer = (connected: boolean) => ({ device: "d", docs_synced: 3, connected });

describe("sync status line", () => {
  const base: Status = { online: true, peers: [], relays: [] };
  it("says when the node's event stream is down, before anything else", () => {
    expect(syncLine(base, false)).toEqual({ text: "Reconnecting to your node…", cls: "off" });
  });
  it("counts connected peers and relays", () => {
    expect(syncLine({ ...base, peers: [peer(true), peer(false), peer(true)], relays: ["https://r.example"] }, true).text).toBe(
      "Online · 2 peers · 1 relay",
    );
    expect(syncLine({ ...base, peers: [peer(true)] }, true).text).toBe("Online · 1 peer");
  });
  it("shows catching up with progress, and offline plainly", () => {
    expect(syncLine({ ...base, catching_up: { done: 3, total: 10 } }, true)).toEqual({ text: "Catching up · 3 of 10", cls: "busy" });
    expect(syncLine({ ...base, catching_up: { done: 10, total: 10 } }, true).cls).toBe("on");
    expect(syncLine({ ...base, online: false }, true)).toEqual({ text: "Offline · your messages sync when a peer is back", cls: "off" });
  });
});

describe("message length", () => {
  it("accepts 40,000 characters (not bytes) and explains 40,001", () => {
    expect(tooLong("é".repeat(40_000))).toBeNull();
    expect(tooLong("👍".repeat(40_000))).toBeNull();
    expect(tooLong("x".repeat(40_001))).toBe(
      "Messages can be at most 40,000 characters; this one has 40,001. Shorten it or split it in two — nothing is lost until you send.",
    );
  });
});
