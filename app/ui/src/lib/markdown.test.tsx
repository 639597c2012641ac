import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { Markdown, parse, parseInline, safeHref } from "./markdown";

const html = (text: string, isMe?: (n: string) => boolean) =>
  renderToStaticMarkup(<Markdown text={text} {...(isMe ? { isMe } : {})} />)
    .replace(/^<div class="md">/, "")
    .replace(/<\/div>$/, "");

describe("inline markdown", () => {
  it("renders bold, italic, strikethrough and inline code", () => {
    expect(html("**bold** and *it* and _also_ and ~~gone~~ and `x < y`")).toBe(
      "<p><span><strong>bold</strong> and <em>it</em> and <em>also</em> and <del>gone</del> and <code>x &lt; y</code></span></p>",
    );
  });

  it("leaves snake_case words, lone stars and unclosed markers as text", () => {
    expect(html("call snake_case_name * 2 and **open")).toBe(
      "<p><span>call snake_case_name * 2 and **open</span></p>",
    );
  });

  it("does not format inside code spans", () => {
    expect(parseInline("`**not bold** @nobody`")).toEqual([{ t: "code", v: "**not bold** @nobody" }]);
  });

  it("links http(s) and mailto, keeps trailing punctuation out of bare URLs", () => {
    expect(html("see https://flyt.chat/docs. and [the guide](https://x.org/a?b=1)")).toBe(
      '<p><span>see <a href="https://flyt.chat/docs" target="_blank" rel="noopener noreferrer">https://flyt.chat/docs</a>. and <a href="https://x.org/a?b=1" target="_blank" rel="noopener noreferrer">the guide</a></span></p>',
    );
  });

  it("marks mentions, and the reader's own specially", () => {
    expect(html("hi @alice and @bob.", (n) => n === "bob")).toBe(
      '<p><span>hi <span class="mention">@alice</span> and <span class="mention me">@bob</span>.</span></p>',
    );
    expect(parseInline("mail a@b.c")).toEqual([{ t: "text", v: "mail a@b.c" }]);
  });
});

describe("blocks", () => {
  it("renders fenced code blocks verbatim with their language", () => {
    expect(html("look:\n```rust\nfn main() { *x }\n```\ndone")).toBe(
      '<p><span>look:</span></p><pre data-lang="rust"><code>fn main() { *x }</code></pre><p><span>done</span></p>',
    );
  });

  it("renders quotes, lists and line breaks", () => {
    expect(parse("> quoted **b**\n> more\n\n- one\n- two\nline\nbreak")).toEqual([
      {
        t: "quote",
        c: [{ t: "p", lines: [[{ t: "text", v: "quoted " }, { t: "b", c: [{ t: "text", v: "b" }] }], [{ t: "text", v: "more" }]] }],
      },
      { t: "ul", items: [[{ t: "text", v: "one" }], [{ t: "text", v: "two" }]] },
      { t: "p", lines: [[{ t: "text", v: "line" }], [{ t: "text", v: "break" }]] },
    ]);
  });

  it("an unclosed fence is plain text", () => {
    expect(html("```\nnot closed")).toBe("<p><span>```</span><span><br/>not closed</span></p>");
  });
});

describe("safety", () => {
  it("never turns message text into HTML", () => {
    const out = html('<img src=x onerror="alert(1)"><script>alert(2)</script> **<b>x</b>**');
    expect(out).not.toContain("<img");
    expect(out).not.toContain("<script");
    expect(out).toContain("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&lt;script&gt;");
    expect(out).toContain("<strong>&lt;b&gt;x&lt;/b&gt;</strong>");
  });

  it("refuses javascript:, data: and relative link targets", () => {
    for (const href of ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,x", "/etc/passwd", "vbscript:x"]) {
      expect(safeHref(href)).toBe(false);
      expect(html(`[click](${href})`)).not.toContain("<a");
    }
    expect(safeHref("https://ok.example")).toBe(true);
    expect(safeHref("mailto:a@b.c")).toBe(true);
  });

  it("escapes code block content", () => {
    expect(html("```\n<script>x</script>\n```")).toBe("<pre><code>&lt;script&gt;x&lt;/script&gt;</code></pre>");
  });
});
