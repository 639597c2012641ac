import { describe, expect, it } from "vitest";
import type { Event } from "../api";
import { mergeMessages, reduceBatch } from "./messages";
import { msg } from "./fixtures";

describe("merging messages", () => {
  it("replaces a message already shown instead of adding it twice", () => {
    const sent = msg({ id: "a", ts: 1, text: "hello" });
    const list = mergeMessages([], [sent]);
    const echoed = mergeMessages(list, [{ ...sent, reactions: { "👍": ["bob"] } }]);
    expect(echoed).toHaveLength(1);
    expect(echoed[0]!.reactions).toEqual({ "👍": ["bob"] });
  });

  it("keeps backend order (timestamp, then id) when messages arrive out of order", () => {
    const list = mergeMessages([], [msg({ id: "b", ts: 2 }), msg({ id: "d", ts: 4 })]);
    const out = mergeMessages(list, [msg({ id: "c", ts: 3 }), msg({ id: "a", ts: 2 }), msg({ id: "e", ts: 5 })]);
    expect(out.map((m) => m.id)).toEqual(["a", "b", "c", "d", "e"]);
  });

  it("returns the same list when nothing is new, and the last duplicate wins", () => {
    const list = mergeMessages([], [msg({ id: "a", ts: 1 })]);
    expect(mergeMessages(list, [])).toBe(list);
    const out = mergeMessages(list, [msg({ id: "b", ts: 2, text: "v1" }), msg({ id: "b", ts: 2, text: "v2" })]);
    expect(out.map((m) => m.text)).toEqual(["hi", "v2"]);
  });

  it("prepends an older page", () => {
    const newest = mergeMessages([], [msg({ id: "x", ts: 100 })]);
    const out = mergeMessages(newest, [msg({ id: "p", ts: 10 }), msg({ id: "q", ts: 20 })]);
    expect(out.map((m) => m.id)).toEqual(["p", "q", "x"]);
  });
});

describe("event batches", () => {
  it("collapse to the latest version of each message and the refetches needed", () => {
    const a1 = msg({ id: "a", ts: 1, text: "one" });
    const b = msg({ id: "b", ts: 2 });
    const events: Event[] = [
      { type: "message", message: a1 },
      { type: "channels" },
      { type: "message", message: b },
      { type: "message", message: { ...a1, text: "edited", edited: true } },
      { type: "channels" },
      { type: "typing", channel: "c1", person: "p", name: "bob" },
      { type: "presence", person: "p", state: "away" },
      { type: "presence", person: "p", state: "online" },
      { type: "status", online: true, peers: [], relays: [] },
      { type: "refresh", channel: "c1" },
    ];
    const r = reduceBatch(events);
    expect(r.messages.map((m) => [m.id, m.text])).toEqual([
      ["b", "hi"],
      ["a", "edited"],
    ]);
    expect(r.channels).toBe(true);
    expect(r.members).toBe(false);
    expect(r.status).toEqual({ online: true, peers: [], relays: [] });
    expect(r.typing).toEqual([{ channel: "c1", person: "p", name: "bob" }]);
    expect(r.presence.get("p")).toBe("online");
    expect([...r.refresh]).toEqual(["c1"]);
  });

  it("a burst of 1,000 messages is one update", () => {
    const events: Event[] = Array.from({ length: 1000 }, (_, i) => ({ type: "message" as const, message: msg({ id: `m${i}`, ts: i }) }));
    const r = reduceBatch(events);
    const list = mergeMessages([], r.messages);
    expect(list).toHaveLength(1000);
    expect(list[999]!.id).toBe("m999");
  });
});
