// The UI's performance in the browser build against a real node: a channel with 100,000
// messages (made once by `flyt-bench local --keep`, reused from $FLYT_UI_BENCH_HOME), served
// by `flyt serve --ui`, driven in Chromium. Prints median and p99 of
//   open:      page load -> the newest screen of the 100k channel painted (`flyt:open`)
//   scroll:    frame times while scrolling back through history (pages load as it goes)
//   incoming:  a message sent by a second real node (bob, joined with an invite) -> on screen
//              (`flyt:incoming` at commit, and after the paint `flyt:incoming:paint`)
// then one JSON line. Usage: npm run bench [-- --runs N]

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { browser, flyt, flytWithin, FLYT, serveUi, start, summarize, tempHome } from "./lib.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("--runs", 20);
const MESSAGES = arg("--messages", 100_000);
const home = process.env.FLYT_UI_BENCH_HOME ?? join(tmpdir(), `flyt-ui-bench-${MESSAGES}`);

if (!existsSync(join(home, "flyt.db"))) {
  const bench = process.env.FLYT_BENCH_BIN ?? join(FLYT, "..", "flyt-bench");
  console.error(`filling ${MESSAGES} messages into ${home} (once)…`);
  execFileSync(bench, ["local", "--messages", String(MESSAGES), "--sends", "1", "--keep", home], { stdio: ["ignore", "ignore", "inherit"] });
  await flyt(home, "channel", "create", "random");
}

const { proc, url } = await serveUi(home);
const b = await browser();
const page = await b.newPage({ viewport: { width: 1280, height: 800 } });
page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
const measures = (name) =>
  page.evaluate((n) => performance.getEntriesByName(n, "measure").map((e) => e.duration), name);

try {
  // open: a fresh page each run, so nothing is cached in the UI.
  const open = [];
  const fromNav = [];
  for (let i = 0; i < RUNS; i++) {
    await page.goto(`${url.replace(/#.*/, "")}?run=${i}#${url.split("#")[1]}`);
    await page.waitForFunction(() => performance.getEntriesByName("flyt:open", "measure").length > 0, null, { timeout: 30_000 });
    const [d] = await measures("flyt:open");
    open.push(d);
    fromNav.push(await page.evaluate(() => {
      const m = performance.getEntriesByName("flyt:open", "measure")[0];
      return m.startTime + m.duration;
    }));
  }
  const rows = await page.getByTestId("message").count();
  if (rows === 0) throw new Error("the newest screen shows no messages");

  // scroll: 600 frames at 40 px per frame upwards (about 24,000 px of history).
  const frames = await page.evaluate(async () => {
    const el = document.querySelector('[data-testid="message-list"]');
    const times = [];
    let last = performance.now();
    for (let i = 0; i < 600; i++) {
      await new Promise((r) => requestAnimationFrame(r));
      const now = performance.now();
      times.push(now - last);
      last = now;
      el.scrollTop -= 40;
    }
    return times.slice(1);
  });
  const loaded = await page.evaluate(() => document.querySelectorAll('[data-testid="message"]').length);
  const frame = summarize(frames);
  const dropped = frames.filter((t) => t > 1000 / 60 * 1.5).length;

  const o = summarize(open);
  const n = summarize(fromNav);
  const f = (x) => x.toFixed(1).padStart(8);
  const line = (name, x, more = "") => console.log(`${name.padEnd(52)} ${f(x.median)} ${f(x.p99)} ${f(x.max)}  ${more}`);
  console.log(`${"measurement".padEnd(52)}   median      p99      max`);
  line("open 100k channel: read -> newest screen painted (ms)", o, `(n=${o.n})`);
  line("  page load -> newest screen painted (ms)", n);
  line("scroll back: frame time (ms)", frame, `(${frame.n} frames, ${dropped} over 25 ms, ${loaded} rows in DOM)`);

  // incoming: bob, a second node, joins and sends one message at a time.
  const bob = tempHome("bench-bob");
  await flyt(bob, "init", "--name", "bob");
  const ticket = (await flyt(home, "invite")).split(/\s+/).find((w) => w.startsWith("flyt1"));
  console.error("bob joins the 100k workspace…");
  await flytWithin(600_000, bob, "join", ticket, "--bind", "127.0.0.1:0");
  const bobNode = start(bob, "serve", "--bind", "127.0.0.1:0");
  await page.getByTestId("channel-general").click();
  await page.evaluate(() => {
    const el = document.querySelector('[data-testid="message-list"]');
    el.scrollTop = el.scrollHeight;
  });
  const N = Math.max(10, RUNS);
  let locked = 0;
  for (let i = 0; i < N; i++) {
    const before = (await measures("flyt:incoming:paint")).length;
    // While bob's node backfills the 100k history, a CLI write can fail with SQLite's
    // "database is locked" (a peer bug, counted and reported here); try again.
    for (let attempt = 0; ; attempt++) {
      try {
        await flyt(bob, "send", "general", `incoming ${i}: the build is green`);
        break;
      } catch (e) {
        if (!/database is locked/.test(e.message) || attempt >= 50) throw e;
        locked++;
      }
    }
    await page.waitForFunction((k) => performance.getEntriesByName("flyt:incoming:paint", "measure").length > k, before, { timeout: 60_000 });
  }
  const incoming = summarize(await measures("flyt:incoming"));
  const incomingPaint = summarize(await measures("flyt:incoming:paint"));
  line("incoming message: event -> rendered (ms)", incoming, `(n=${incoming.n})`);
  line("incoming message: event -> painted (ms)", incomingPaint);
  if (locked) console.log(`(bob's flyt send hit "database is locked" ${locked} times while his node backfilled)`);
  console.log(JSON.stringify({ messages: MESSAGES, open_ms: o, load_to_paint_ms: n, frame_ms: frame, dropped_frames: dropped, incoming_ms: incoming, incoming_paint_ms: incomingPaint, sends_locked: locked }));
  await bobNode.stop();
} finally {
  await b.close();
  await proc.stop();
}
process.exit(0);
