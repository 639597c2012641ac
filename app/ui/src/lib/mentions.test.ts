import { describe, expect, it } from "vitest";
import type { Member } from "../api";
import { applyMention, mentionAt, suggest } from "./mentions";

const members: Member[] = [
  { person: "1", name: "alice", role: "owner" },
  { person: "2", name: "Alfred", role: "member" },
  { person: "3", name: "bob", role: "member" },
  { person: "4", name: "malin", role: "member" },
  { person: "5", name: "alan", role: "removed" },
];

describe("mention at the caret", () => {
  it("finds what is typed after @", () => {
    expect(mentionAt("hi @al", 6)).toEqual({ start: 3, query: "al" });
    expect(mentionAt("@", 1)).toEqual({ start: 0, query: "" });
    expect(mentionAt("(@zoë-k", 7)).toEqual({ start: 1, query: "zoë-k" });
  });

  it("ignores e-mail addresses, finished mentions and code spans", () => {
    expect(mentionAt("mail a@b", 8)).toBeNull();
    expect(mentionAt("@alice hi", 9)).toBeNull();
    expect(mentionAt("`@al", 4)).toBeNull();
    expect(mentionAt("`x` @al", 7)).toEqual({ start: 4, query: "al" });
  });
});

describe("suggestions", () => {
  it("lists prefix matches first, then substring matches, never removed members", () => {
    expect(suggest(members, "al").map((m) => m.name)).toEqual(["alice", "Alfred", "malin"]);
    expect(suggest(members, "").map((m) => m.name)).toEqual(["alice", "Alfred", "bob", "malin"]);
    expect(suggest(members, "AL", 1).map((m) => m.name)).toEqual(["alice"]);
  });

  it("replaces the partial name with the full one and a space", () => {
    const text = "hi @al, there";
    const q = mentionAt(text, 6)!;
    expect(applyMention(text, q, 6, "alice")).toEqual({ text: "hi @alice, there", caret: 9 });
    const t2 = "ping @bo";
    expect(applyMention(t2, mentionAt(t2, 8)!, 8, "bob")).toEqual({ text: "ping @bob ", caret: 10 });
  });
});
