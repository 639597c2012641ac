// What the backend refuses, said before sending so nothing typed is lost.

/** The longest message the backend accepts (crdt-model `MAX_TEXT_CHARS`), in characters. */
export const MAX_CHARS = 40_000;

/** A friendly sentence when `text` cannot be sent as it is, else null. */
export function tooLong(text: string): string | null {
  const n = [...text].length;
  if (n <= MAX_CHARS) return null;
  return `Messages can be at most ${MAX_CHARS.toLocaleString("en-US")} characters; this one has ${n.toLocaleString("en-US")}. Shorten it or split it in two — nothing is lost until you send.`;
}
