// @mention autocomplete in the composer: what is being typed at the caret, which members
// match it, and the text after picking one. The backend parses mentions with the same rule
// (crdt-model `mentions::parse`): `@` at the start or after a non-word character, then
// letters, digits, `_`, `-` and `.`.

import type { Member } from "../api";

export interface MentionQuery {
  /** Index of the `@`. */
  start: number;
  /** What follows the `@` up to the caret. */
  query: string;
}

/** The mention being typed at `caret`, if any. */
export function mentionAt(text: string, caret: number): MentionQuery | null {
  const before = text.slice(0, caret);
  const m = /(^|[^\p{L}\p{N}_])@([\p{L}\p{N}_.-]*)$/u.exec(before);
  if (!m) return null;
  // Inside an inline code span, `@` is just a character.
  const ticks = (before.slice(0, m.index + m[1]!.length).match(/`/g) ?? []).length;
  if (ticks % 2 === 1) return null;
  return { start: m.index + m[1]!.length, query: m[2]! };
}

/** Members whose name matches `query`: prefix matches first, then substring, at most `limit`. */
export function suggest(members: readonly Member[], query: string, limit = 8): Member[] {
  const q = query.toLowerCase();
  const active = members.filter((m) => m.role !== "removed");
  const prefix = active.filter((m) => m.name.toLowerCase().startsWith(q));
  const inner = active.filter(
    (m) => !m.name.toLowerCase().startsWith(q) && m.name.toLowerCase().includes(q),
  );
  return [...prefix, ...inner].slice(0, limit);
}

/** Replaces the mention at `q` (up to `caret`) by `@name` and a space (unless a space or
 * punctuation follows already); returns the new text and the caret after the name. */
export function applyMention(
  text: string,
  q: MentionQuery,
  caret: number,
  name: string,
): { text: string; caret: number } {
  const after = text.slice(caret).replace(/^[\p{L}\p{N}_.-]*/u, "");
  const insert = /^[\s,.!?;:)]/u.test(after) ? `@${name}` : `@${name} `;
  return { text: text.slice(0, q.start) + insert + after, caret: q.start + insert.length };
}
