import { describe, expect, it } from "vitest";
import { msg } from "./fixtures";
import { buildRows, dayLabel, fullTime, GROUP_WINDOW_MS, shortTime, timeOfDay } from "./timeline";

const day = (y: number, m: number, d: number, h = 12, min = 0) => new Date(y, m - 1, d, h, min).getTime();
const bob = { name: "bob", key: "kb" };

describe("rows", () => {
  it("puts a day separator before each new local day", () => {
    const rows = buildRows(
      [msg({ ts: day(2026, 11, 30, 9) }), msg({ ts: day(2026, 12, 1, 23, 59) }), msg({ ts: day(2026, 12, 2, 0, 1) })],
      day(2026, 12, 2, 15),
    );
    expect(rows.map((r) => (r.kind === "day" ? r.label : "msg"))).toEqual([
      "Monday, November 30",
      "msg",
      "Yesterday",
      "msg",
      "Today",
      "msg",
    ]);
  });

  it("groups one author's consecutive messages within the window", () => {
    const t = day(2026, 12, 2, 10);
    const rows = buildRows([
      msg({ ts: t }),
      msg({ ts: t + 1000 }),
      msg({ ts: t + 2000, author: bob }),
      msg({ ts: t + 3000, author: bob }),
      msg({ ts: t + 3000 + GROUP_WINDOW_MS, author: bob }),
      msg({ ts: t + 3001 + GROUP_WINDOW_MS, author: bob, verified: false }),
    ]);
    expect(rows.filter((r) => r.kind === "msg").map((r) => r.kind === "msg" && r.grouped)).toEqual([
      false,
      true,
      false,
      true,
      false,
      false,
    ]);
  });

  it("does not group across a day boundary or after a deleted message", () => {
    const rows = buildRows([
      msg({ ts: day(2026, 12, 1, 23, 59) }),
      msg({ ts: day(2026, 12, 2, 0, 0) }),
      msg({ ts: day(2026, 12, 2, 0, 1), deleted: true }),
      msg({ ts: day(2026, 12, 2, 0, 2) }),
    ]);
    expect(rows.filter((r) => r.kind === "msg").map((r) => r.kind === "msg" && r.grouped)).toEqual([false, false, true, false]);
  });

  it("labels days in another year with the year", () => {
    expect(dayLabel(day(2025, 3, 4), day(2026, 12, 2))).toBe("March 4, 2025");
  });
});

describe("times", () => {
  // The formatters are made once; they must say what the per-call Date methods said.
  it("match the locale's own formatting", () => {
    for (const ts of [day(2026, 12, 6, 0, 5), day(2026, 12, 6, 14, 30), day(2025, 1, 9, 23, 59)]) {
      const d = new Date(ts);
      expect(timeOfDay(ts)).toBe(d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
      expect(shortTime(ts)).toBe(d.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" }).replace(/\s?[AP]M$/i, ""));
      expect(fullTime(ts)).toBe(d.toLocaleString());
    }
  });
});
