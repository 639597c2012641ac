// Chat Markdown: fenced code blocks, quotes, bullet lists, inline code, bold, italic,
// strikethrough, links, bare URLs and @mentions. The parser builds a small tree that is
// rendered as React elements, so message text can never become HTML: there is no HTML string
// anywhere on this path, and link targets other than http(s) and mailto render as text.
// (A general Markdown library would need an HTML sanitiser after it and costs more per
// message than the whole of this; chat needs only this subset.)

import type { ReactNode } from "react";

export type Inline =
  | { t: "text"; v: string }
  | { t: "code"; v: string }
  | { t: "b" | "i" | "s"; c: Inline[] }
  | { t: "link"; href: string; c: Inline[] }
  | { t: "mention"; name: string };

export type Block =
  | { t: "p"; lines: Inline[][] }
  | { t: "pre"; lang: string; v: string }
  | { t: "quote"; c: Block[] }
  | { t: "ul"; items: Inline[][] };

const MENTION_CHAR = /[\p{L}\p{N}_.-]/u;
const WORD_CHAR = /[\p{L}\p{N}_]/u;

/** Whether `href` may be a link target (no `javascript:`, `data:`, relative paths...). */
export function safeHref(href: string): boolean {
  return /^(https?:\/\/|mailto:)[^\s]+$/i.test(href);
}

function isWord(c: string | undefined): boolean {
  return c !== undefined && WORD_CHAR.test(c);
}

/** The index of the closing `marker` for an emphasis opened at `from`, or -1. */
function closing(s: string, from: number, marker: string): number {
  let j = s.indexOf(marker, from);
  while (j !== -1) {
    const inner = s.slice(from, j);
    const okEdges = inner.length > 0 && !/^\s/.test(inner) && !/\s$/.test(inner);
    // `_` closes only at a word boundary, so snake_case_names stay text.
    const okBoundary = marker !== "_" || !isWord(s[j + 1]);
    if (okEdges && okBoundary) return j;
    j = s.indexOf(marker, j + 1);
  }
  return -1;
}

/** Parses one line of inline Markdown. */
export function parseInline(s: string): Inline[] {
  const out: Inline[] = [];
  let text = "";
  const flush = () => {
    if (text) out.push({ t: "text", v: text });
    text = "";
  };
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    const prev = s[i - 1];
    if (c === "\\" && i + 1 < s.length && /[\\`*_~[\]()@>#-]/.test(s[i + 1]!)) {
      text += s[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      const end = s.indexOf("`", i + 1);
      if (end > i + 1) {
        flush();
        out.push({ t: "code", v: s.slice(i + 1, end) });
        i = end + 1;
        continue;
      }
    }
    const two = s.slice(i, i + 2);
    if (two === "**" || two === "~~" || two === "__") {
      const end = closing(s, i + 2, two);
      if (end !== -1) {
        flush();
        out.push({ t: two === "~~" ? "s" : "b", c: parseInline(s.slice(i + 2, end)) });
        i = end + 2;
        continue;
      }
    }
    if ((c === "*" || c === "_") && !(c === "_" && isWord(prev))) {
      const end = closing(s, i + 1, c);
      if (end !== -1) {
        flush();
        out.push({ t: "i", c: parseInline(s.slice(i + 1, end)) });
        i = end + 1;
        continue;
      }
    }
    if (c === "[") {
      const mid = s.indexOf("](", i + 1);
      const end = mid === -1 ? -1 : s.indexOf(")", mid + 2);
      if (mid > i + 1 && end !== -1) {
        const href = s.slice(mid + 2, end).trim();
        if (safeHref(href)) {
          flush();
          out.push({ t: "link", href, c: parseInline(s.slice(i + 1, mid)) });
          i = end + 1;
          continue;
        }
      }
    }
    if ((c === "h" || c === "H") && !isWord(prev)) {
      const m = /^https?:\/\/[^\s<>]+/i.exec(s.slice(i));
      if (m) {
        // Trailing punctuation belongs to the sentence, not the URL.
        const url = m[0].replace(/[.,;:!?'")\]]+$/, "");
        flush();
        out.push({ t: "link", href: url, c: [{ t: "text", v: url }] });
        i += url.length;
        continue;
      }
    }
    if (c === "@" && !isWord(prev)) {
      let j = i + 1;
      while (j < s.length && MENTION_CHAR.test(s[j]!)) j++;
      let name = s.slice(i + 1, j);
      name = name.replace(/\.+$/, "");
      if (name) {
        flush();
        out.push({ t: "mention", name });
        i += 1 + name.length;
        continue;
      }
    }
    text += c;
    i++;
  }
  flush();
  return out;
}

/** Parses a message into blocks. */
export function parse(src: string): Block[] {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const blocks: Block[] = [];
  let para: Inline[][] = [];
  const endPara = () => {
    if (para.length) blocks.push({ t: "p", lines: para });
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const fence = /^\s*```\s*([\w+-]*)\s*$/.exec(line);
    if (fence) {
      const end = lines.findIndex((l, j) => j > i && /^\s*```\s*$/.test(l));
      if (end !== -1) {
        endPara();
        blocks.push({ t: "pre", lang: fence[1] ?? "", v: lines.slice(i + 1, end).join("\n") });
        i = end;
        continue;
      }
    }
    // A one-line fenced block: ```code```
    const inlineFence = /^\s*```(.+)```\s*$/.exec(line);
    if (inlineFence) {
      endPara();
      blocks.push({ t: "pre", lang: "", v: inlineFence[1]! });
      continue;
    }
    if (/^>( |$)/.test(line)) {
      endPara();
      const quoted: string[] = [];
      while (i < lines.length && /^>( |$)/.test(lines[i]!)) {
        quoted.push(lines[i]!.replace(/^> ?/, ""));
        i++;
      }
      i--;
      blocks.push({ t: "quote", c: parse(quoted.join("\n")) });
      continue;
    }
    if (/^\s*[-*•] \S/.test(line)) {
      endPara();
      const items: Inline[][] = [];
      while (i < lines.length && /^\s*[-*•] \S/.test(lines[i]!)) {
        items.push(parseInline(lines[i]!.replace(/^\s*[-*•] /, "")));
        i++;
      }
      i--;
      blocks.push({ t: "ul", items });
      continue;
    }
    if (line.trim() === "") {
      endPara();
      continue;
    }
    para.push(parseInline(line));
  }
  endPara();
  return blocks;
}

export interface RenderOptions {
  /** Names that are the reader (rendered as a highlighted mention). */
  isMe?: (name: string) => boolean;
}

function inlines(nodes: Inline[], o: RenderOptions): ReactNode[] {
  return nodes.map((n, k) => {
    switch (n.t) {
      case "text":
        return n.v;
      case "code":
        return <code key={k}>{n.v}</code>;
      case "b":
        return <strong key={k}>{inlines(n.c, o)}</strong>;
      case "i":
        return <em key={k}>{inlines(n.c, o)}</em>;
      case "s":
        return <del key={k}>{inlines(n.c, o)}</del>;
      case "link":
        return (
          <a key={k} href={n.href} target="_blank" rel="noopener noreferrer">
            {inlines(n.c, o)}
          </a>
        );
      case "mention":
        return (
          <span key={k} className={o.isMe?.(n.name) ? "mention me" : "mention"}>
            @{n.name}
          </span>
        );
    }
  });
}

function blocksToReact(blocks: Block[], o: RenderOptions): ReactNode[] {
  return blocks.map((b, k) => {
    switch (b.t) {
      case "p":
        return (
          <p key={k}>
            {b.lines.map((l, j) => (
              <span key={j}>
                {j > 0 && <br />}
                {inlines(l, o)}
              </span>
            ))}
          </p>
        );
      case "pre":
        return (
          <pre key={k} data-lang={b.lang || undefined}>
            <code>{b.v}</code>
          </pre>
        );
      case "quote":
        return <blockquote key={k}>{blocksToReact(b.c, o)}</blockquote>;
      case "ul":
        return (
          <ul key={k}>
            {b.items.map((it, j) => (
              <li key={j}>{inlines(it, o)}</li>
            ))}
          </ul>
        );
    }
  });
}

/** Renders message text as React elements. */
export function Markdown({ text, isMe }: { text: string } & RenderOptions) {
  return <div className="md">{blocksToReact(parse(text), { isMe })}</div>;
}
