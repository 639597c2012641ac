// End-to-end in the real desktop window: `flyt-app` (the Tauri shell, built with its UI
// embedded) on a fresh home under Xvfb, driven over the W3C WebDriver protocol by Debian's
// WebKitWebDriver (`webkit2gtk-driver`), chatting with a real CLI node (bob). Then the app is
// started again on the same home to measure the time from start to the channel's first paint.
//
// Usage (from app/ui): node e2e/tauri.mjs. Needs `cargo build -p app --features custom-protocol`
// (after `npm run build`), `cargo build -p cli`, Xvfb and WebKitWebDriver. $FLYT_APP and
// $FLYT_BIN override the binaries. Exits non-zero on the first failure; every process it
// started is stopped at exit, and the whole run has a deadline.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { flyt, start, tempHome } from "./lib.mjs";

const repo = resolve(import.meta.dirname, "../../..");
const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
const APP = process.env.FLYT_APP ?? join(target, "debug", "flyt-app");
const DRIVER = process.env.WEBKIT_WEBDRIVER ?? "WebKitWebDriver";
const T = 30_000; // the longest any single step may wait
const SCREENSHOT = join(import.meta.dirname, "..", "screenshot-tauri.png");
const out = join(import.meta.dirname, "out");

const deadline = setTimeout(() => {
  console.error("tauri e2e: over the 4-minute budget");
  process.exit(1);
}, 240_000);

// Xvfb and WebKitWebDriver run in their own process groups, so stopping a group also stops
// the app WebKitWebDriver launched, even if the driver dies first.
const groups = new Set();
function stopGroups() {
  for (const pid of groups) {
    try {
      process.kill(-pid, "SIGTERM");
    } catch {
      // already gone
    }
  }
  groups.clear();
}
process.on("exit", stopGroups);

function spawnGroup(cmd, args, opts) {
  const child = spawn(cmd, args, { ...opts, detached: true });
  groups.add(child.pid);
  child.on("exit", () => groups.delete(child.pid));
  const log = [];
  for (const s of [child.stdout, child.stderr]) s?.on("data", (c) => log.push(...c.toString().split("\n").filter(Boolean)));
  child.log = log;
  return child;
}

/** Xvfb on a display it picks itself (`-displayfd`); resolves with ":N". */
async function xvfb() {
  const child = spawnGroup("Xvfb", ["-displayfd", "3", "-screen", "0", "1280x800x24", "-nolisten", "tcp"], {
    stdio: ["ignore", "ignore", "pipe", "pipe"],
  });
  const display = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`Xvfb did not start: ${child.log.join("\n")}`)), 10_000);
    let buf = "";
    child.stdio[3].on("data", (c) => {
      buf += c;
      if (buf.includes("\n")) {
        clearTimeout(timer);
        ok(`:${buf.trim()}`);
      }
    });
    child.on("exit", (code) => fail(new Error(`Xvfb exited (${code}): ${child.log.join("\n")}`)));
  });
  return display;
}

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A minimal W3C WebDriver client over fetch. */
class Driver {
  constructor(base) {
    this.base = base;
    this.session = null;
  }

  async cmd(method, path, body, ms = T * 2) {
    const url = `${this.base}${path.replace(":s", this.session ?? "")}`;
    const res = await fetch(url, {
      method,
      headers: body ? { "content-type": "application/json" } : undefined,
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(ms),
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) {
      const v = json.value ?? {};
      const e = new Error(`${method} ${path}: ${res.status} ${v.error ?? ""} ${v.message ?? JSON.stringify(json)}`);
      e.webdriver = v.error;
      throw e;
    }
    return json.value;
  }

  async ready() {
    const until = Date.now() + 10_000;
    for (;;) {
      try {
        const s = await this.cmd("GET", "/status");
        if (s?.ready !== false) return;
      } catch (e) {
        if (Date.now() > until) throw new Error(`WebKitWebDriver did not answer: ${e.message}`);
      }
      await sleep(50);
    }
  }

  async start(binary, args = []) {
    const v = await this.cmd("POST", "/session", {
      capabilities: { alwaysMatch: { "webkitgtk:browserOptions": { binary, args } } },
    });
    this.session = v.sessionId;
    return v;
  }

  async quit() {
    if (!this.session) return;
    await this.cmd("DELETE", "/session/:s").catch(() => undefined);
    this.session = null;
  }

  /** The element for a CSS selector (or `xpath:...`), waiting up to `ms` for it. */
  async find(selector, ms = T) {
    const [using, value] = selector.startsWith("xpath:")
      ? ["xpath", selector.slice(6)]
      : ["css selector", selector];
    const until = Date.now() + ms;
    for (;;) {
      try {
        const v = await this.cmd("POST", "/session/:s/element", { using, value });
        return Object.values(v)[0];
      } catch (e) {
        if (e.webdriver !== "no such element" || Date.now() > until) {
          throw new Error(`waiting ${ms} ms for ${selector}: ${e.message}`);
        }
      }
      await sleep(20);
    }
  }

  click(el) {
    return this.cmd("POST", `/session/:s/element/${el}/click`, {});
  }

  type(el, text) {
    return this.cmd("POST", `/session/:s/element/${el}/value`, { text });
  }

  text(el) {
    return this.cmd("GET", `/session/:s/element/${el}/text`);
  }

  property(el, name) {
    return this.cmd("GET", `/session/:s/element/${el}/property/${name}`);
  }

  script(body, args = []) {
    return this.cmd("POST", "/session/:s/execute/sync", { script: body, args });
  }

  async screenshot(path) {
    // WebKitGTK takes the shot after the page's next rendering update, and an idle page under
    // Xvfb has none: keep one coming for a few seconds (an invisible one-pixel change).
    await this.script(`const el = document.createElement("div");
      el.style.cssText = "position:fixed;left:0;top:0;width:1px;height:1px;opacity:0.01;pointer-events:none";
      document.body.appendChild(el);
      const end = performance.now() + 5000;
      const tick = (t) => { el.style.background = el.style.background ? "" : "#000"; if (t < end) requestAnimationFrame(tick); else el.remove(); };
      requestAnimationFrame(tick);`);
    const png = await this.cmd("GET", "/session/:s/screenshot", undefined, 20_000);
    writeFileSync(path, Buffer.from(png, "base64"));
  }
}

const ENTER = "\uE007";
const button = (label) => `xpath://button[normalize-space()=${JSON.stringify(label)}]`;
const message = (text, inside = "") => `xpath://*[@data-testid="message"][contains(., ${JSON.stringify(text)})]${inside}`;
const composer = 'textarea[aria-label^="Message #"]';

let wd;
let failures = 0;
let passed = 0;
async function step(name, f) {
  const t = Date.now();
  try {
    await f();
    passed++;
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}\n${e.stack ?? e}`);
    if (driver) console.log(`WebKitWebDriver and app output:\n${driver.log.slice(-30).join("\n")}`);
    if (wd?.session) {
      mkdirSync(out, { recursive: true });
      await wd.screenshot(join(out, "tauri-failure.png")).catch(() => undefined);
      console.log(`(screenshot of the window: ${join(out, "tauri-failure.png")})`);
    }
    throw e;
  }
}

for (const [what, path] of [["flyt-app", APP]]) {
  if (!existsSync(path)) {
    console.error(`no ${what} at ${path}: run \`cargo build -p app --features custom-protocol\` (after \`npm run build\` in app/ui)`);
    process.exit(1);
  }
}

const aliceHome = tempHome("app-alice");
const bobHome = tempHome("app-bob");
let driver;

try {
  const display = await xvfb();
  const port = await freePort();
  driver = spawnGroup(DRIVER, [`--port=${port}`, "--host=127.0.0.1"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      DISPLAY: display,
      // What the app reads: its home, a loopback-only node, and WebKit's automation switch.
      FLYT_HOME: aliceHome,
      FLYT_BIND: "127.0.0.1:0",
      TAURI_WEBVIEW_AUTOMATION: "true",
      RUST_LOG: process.env.RUST_LOG ?? "warn",
      // No GPU under Xvfb: WebKit's software path.
      LIBGL_ALWAYS_SOFTWARE: "1",
      WEBKIT_DISABLE_DMABUF_RENDERER: "1",
      WEBKIT_DISABLE_COMPOSITING_MODE: "1",
    },
  });
  wd = new Driver(`http://127.0.0.1:${port}`);
  await wd.ready();

  await step("the window opens on onboarding; name, then create a workspace", async () => {
    const t0 = Date.now();
    await wd.start(APP);
    const name = await wd.find('input[aria-label="Your name"]');
    console.log(`     (window up and onboarding painted ${Date.now() - t0} ms after the session was asked for)`);
    const title = await wd.cmd("GET", "/session/:s/title");
    assert.match(title, /Flyt/, `window title ${title}`);
    await wd.type(name, "alice");
    await wd.click(await wd.find(button("Continue")));
    const ws = await wd.find('input[placeholder="e.g. Acme Inc"]');
    await wd.type(ws, "Acme");
    await wd.click(await wd.find(button("Create workspace")));
    await wd.find(composer);
    assert.equal(await wd.text(await wd.find(".ws-header h1")), "Acme");
  });

  await step("send: the message shows at once, rendered as Markdown", async () => {
    await wd.type(await wd.find(composer), `Hello from the **desktop** app${ENTER}`);
    await wd.find(message("Hello from the desktop app", '//strong[.="desktop"]'));
    assert.equal(await wd.property(await wd.find(composer), "value"), "");
  });

  await step("a bad request is refused with the API's error, through the Tauri command", async () => {
    // The UI's own transport (api.ts → invoke("api")), from inside the window.
    const r = await wd.cmd("POST", "/session/:s/execute/async", {
      script: `const done = arguments[arguments.length - 1];
        window.__TAURI_INTERNALS__.invoke("api", { req: { cmd: "send", channel: "general", text: "" } })
          .then((v) => done({ ok: v }), (e) => done({ err: e }));`,
      args: [],
    });
    assert.equal(r.err?.code, "bad_request", JSON.stringify(r));
    assert.match(r.err?.message ?? "", /empty|text/i, JSON.stringify(r));
  });

  let ticket;
  await step("invite: a ticket from the app's Invite dialog", async () => {
    await wd.click(await wd.find('button[aria-label="Invite people"]'));
    await wd.click(await wd.find(button("Create invite ticket")));
    const box = await wd.find('textarea[aria-label="Invite ticket"]');
    const until = Date.now() + T;
    while (!(ticket = await wd.property(box, "value"))?.startsWith("flyt1") && Date.now() < until) await sleep(50);
    assert.match(ticket ?? "", /^flyt1/);
    await wd.click(await wd.find('[role="dialog"] button[aria-label="Close"]'));
  });

  await step("a CLI peer joins with it and its message arrives in the window", async () => {
    await flyt(bobHome, "init", "--name", "bob");
    await flyt(bobHome, "join", ticket, "--bind", "127.0.0.1:0");
    start(bobHome, "serve", "--bind", "127.0.0.1:0");
    await flyt(bobHome, "send", "general", "hi alice, bob here from the *CLI*");
    await wd.find(message("bob here from the CLI"));
    const text = await wd.text(await wd.find(message("bob here from the CLI")));
    assert.match(text, /bob/);
  });

  await step("screenshot of the window (app/ui/screenshot-tauri.png)", async () => {
    await wd.screenshot(SCREENSHOT);
  });

  await step("started again on the same home: the channel paints with both messages", async () => {
    await wd.quit();
    const t0 = Date.now();
    await wd.start(APP);
    const session = Date.now() - t0;
    await wd.find('[data-testid="message"]');
    const paint = Date.now() - t0;
    await wd.find(message("bob here from the CLI"));
    await wd.find(message("Hello from the desktop app"));
    console.log(`     (app start → channel painted: ${paint} ms; of which ${session} ms until WebKitWebDriver had the window)`);
  });
} finally {
  await wd?.quit();
  clearTimeout(deadline);
  stopGroups();
}

console.log(`tauri e2e: ${passed} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
