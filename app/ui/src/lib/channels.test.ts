import { describe, expect, it } from "vitest";
import type { Channel } from "../api";
import { canManage, channelTitle, dmOthers } from "./channels";

const dm = (members: [string, string][], name = "@x"): Channel => ({
  id: "c1",
  name,
  topic: "",
  private: true,
  dm: true,
  members: members.map(([person, n]) => ({ person, name: n })),
  unread: 0,
  mentions: 0,
  last_ts: null,
});

describe("channel titles", () => {
  it("names a DM after the other people, sorted, without me", () => {
    const c = dm([["k-alice", "alice"], ["k-carol", "carol"], ["k-bob", "bob"]]);
    expect(channelTitle(c, "k-alice")).toBe("bob, carol");
    expect(dmOthers(c, "k-alice").map((m) => m.person)).toEqual(["k-bob", "k-carol"]);
  });

  it("a DM with only me is named after me", () => {
    expect(channelTitle(dm([["k-alice", "alice"]]), "k-alice")).toBe("alice");
  });

  it("falls back to the node's @name when the member list is not there", () => {
    expect(channelTitle(dm([], "@bob,carol"), "k-alice")).toBe("bob, carol");
  });

  it("a channel keeps its own name", () => {
    expect(channelTitle({ ...dm([["k-a", "a"]]), dm: false, name: "general" }, "k-a")).toBe("general");
  });

  it("only owners and admins manage the workspace", () => {
    expect([canManage("owner"), canManage("admin"), canManage("member"), canManage(undefined)]).toEqual([true, true, false, false]);
  });
});
