// Turns a channel's messages (oldest first) into the rows the message list renders: a day
// separator before each new local day, and consecutive messages from one author grouped under
// one name and avatar.

import type { Message } from "../api";

export type Row =
  | { kind: "day"; key: string; label: string }
  | { kind: "msg"; key: string; message: Message; grouped: boolean };

/** Messages from one author closer together than this share one header. */
export const GROUP_WINDOW_MS = 5 * 60 * 1000;

function dayKey(ts: number): string {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}

// One formatter each, made once: `toLocaleTimeString(locale, options)` builds a new
// Intl.DateTimeFormat on every call, and a screen of messages formats three times each
// (a sixth of a channel's first open, in a profile).
const OTHER_YEAR = new Intl.DateTimeFormat("en-US", { month: "long", day: "numeric", year: "numeric" });
const THIS_YEAR = new Intl.DateTimeFormat("en-US", { weekday: "long", month: "long", day: "numeric" });
const SHORT = new Intl.DateTimeFormat([], { hour: "numeric", minute: "2-digit" });
const TIME_OF_DAY = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const FULL = new Intl.DateTimeFormat([], {
  year: "numeric",
  month: "numeric",
  day: "numeric",
  hour: "numeric",
  minute: "2-digit",
  second: "2-digit",
});

/** "Today", "Yesterday", "Monday, December 1" or, in another year, "December 1, 2025". */
export function dayLabel(ts: number, now: number = Date.now()): string {
  const d = new Date(ts);
  const today = new Date(now);
  const startOf = (x: Date) => new Date(x.getFullYear(), x.getMonth(), x.getDate()).getTime();
  const days = Math.round((startOf(today) - startOf(d)) / 86_400_000);
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  if (d.getFullYear() !== today.getFullYear())
    return OTHER_YEAR.format(d);
  return THIS_YEAR.format(d);
}

/** "2:05" (no AM/PM): the time in a grouped message's narrow gutter. */
export function shortTime(ts: number): string {
  return SHORT.format(ts).replace(/\s?[AP]M$/i, "");
}

/** "2:05 PM"-style time of day, in the user's locale. */
export function timeOfDay(ts: number): string {
  return TIME_OF_DAY.format(ts);
}

/** Date and time in full, in the user's locale: a timestamp's tooltip. */
export function fullTime(ts: number): string {
  return FULL.format(ts);
}

export function buildRows(messages: readonly Message[], now: number = Date.now()): Row[] {
  const rows: Row[] = [];
  let prev: Message | null = null;
  let prevDay = "";
  for (const m of messages) {
    const day = dayKey(m.ts);
    const newDay = !prev || prevDay !== day;
    prevDay = day;
    if (newDay) rows.push({ kind: "day", key: `day-${day}`, label: dayLabel(m.ts, now) });
    const grouped =
      !newDay &&
      prev !== null &&
      prev.author.key === m.author.key &&
      prev.verified === m.verified &&
      !prev.deleted &&
      m.ts - prev.ts < GROUP_WINDOW_MS &&
      m.ts >= prev.ts;
    rows.push({ kind: "msg", key: m.id, message: m, grouped });
    prev = m;
  }
  return rows;
}
