// Shared pieces of the browser tests, the benchmark and the screenshot script: real `flyt`
// processes on temporary homes, `flyt serve --ui` for the page, and Debian's Chromium driven by
// playwright-core. Every wait has a deadline; every process started here is stopped at exit.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const repo = resolve(import.meta.dirname, "../../..");
const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");

/** The `flyt` binary: $FLYT_BIN, else the cargo target dir's debug build. */
export const FLYT = process.env.FLYT_BIN ?? join(target, "debug", "flyt");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const children = new Set();
const dirs = [];
function cleanup() {
  for (const c of children) c.kill("SIGTERM");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
process.on("exit", cleanup);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

export function tempHome(name) {
  const d = mkdtempSync(join(tmpdir(), `flyt-ui-${name}-`));
  dirs.push(d);
  return d;
}

/** Runs `flyt --home HOME ...args` to completion; returns stdout (JSON parsed with --json). */
export function flyt(home, ...args) {
  return flytWithin(60_000, home, ...args);
}

/** `flyt` with a deadline of `ms` (a join of a big workspace takes a while in a debug build). */
export async function flytWithin(ms, home, ...args) {
  if (!existsSync(FLYT)) throw new Error(`no flyt binary at ${FLYT}: run \`cargo build -p cli\` first`);
  try {
    const { stdout } = await run(FLYT, ["--home", home, ...args], { timeout: ms, maxBuffer: 64 << 20 });
    return args.includes("--json") ? JSON.parse(stdout) : stdout.trim();
  } catch (e) {
    const why = e.killed ? `killed after ${ms / 1000} s` : `exit ${e.code}${e.signal ? `, ${e.signal}` : ""}`;
    throw new Error(`flyt ${args.join(" ")} failed (${why}): ${e.stderr || e.stdout || e.message}`);
  }
}

/** A long-running `flyt` process whose output lines can be awaited. */
export function start(home, ...args) {
  return startBin(FLYT, ["--home", home, ...args]);
}

/** `flyt-relay` (built beside `flyt`) on free loopback ports: the process and its HTTP URL. */
export async function startRelay() {
  const bin = join(dirname(FLYT), "flyt-relay");
  if (!existsSync(bin)) return null;
  const data = tempHome("relay");
  const p = startBin(bin, ["--listen", "127.0.0.1:0", "--iroh-bind", "127.0.0.1:0", "--data-dir", data]);
  // tracing colours its fields when it likes: match through the escape codes.
  const line = (await p.waitFor(/relay started/, 60_000, "the relay to start")).replace(/\x1b\[[0-9;]*m/g, "");
  return { proc: p, url: `http://${/http=(\S+)/.exec(line)[1]}` };
}

function startBin(bin, argv) {
  const name = `${basename(bin)} ${argv.join(" ")}`;
  const child = spawn(bin, argv, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const lines = [];
  const waiters = [];
  let exited = null;
  const feed = (chunk) => {
    for (const line of chunk.toString().split("\n")) {
      if (!line) continue;
      lines.push(line);
      for (const w of [...waiters]) if (w.test(line)) w.done(line);
    }
  };
  // Both streams, split into whole lines.
  for (const stream of [child.stdout, child.stderr]) {
    let buf = "";
    stream.on("data", (c) => {
      buf += c;
      const i = buf.lastIndexOf("\n");
      if (i >= 0) {
        feed(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
  }
  child.on("exit", (code) => {
    exited = code;
    children.delete(child);
    for (const w of [...waiters]) w.fail(new Error(`${name} exited (${code}):\n${lines.slice(-20).join("\n")}`));
  });
  return {
    child,
    lines,
    /** Resolves with the first output line (past or future) matching `re`. */
    waitFor(re, ms = 30_000, what = String(re)) {
      const seen = lines.find((l) => re.test(l));
      if (seen) return Promise.resolve(seen);
      if (exited !== null) return Promise.reject(new Error(`${name} already exited (${exited})`));
      return new Promise((resolveP, reject) => {
        const w = {
          test: (l) => re.test(l),
          done: (l) => {
            clearTimeout(timer);
            waiters.splice(waiters.indexOf(w), 1);
            resolveP(l);
          },
          fail: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`timed out after ${ms} ms waiting for ${what}; last output:\n${lines.slice(-10).join("\n")}`));
        }, ms);
        waiters.push(w);
      });
    },
    async stop() {
      if (exited !== null) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await gone;
    },
  };
}

/** `flyt serve --ui` on `home`; resolves with the process and the page URL (with token). */
export async function serveUi(home, extra = []) {
  const dist = join(repo, "app", "ui", "dist");
  if (!existsSync(join(dist, "index.html"))) throw new Error(`the UI is not built: run \`npm run build\` in app/ui`);
  const p = start(home, "serve", "--bind", "127.0.0.1:0", "--ui", "127.0.0.1:0", "--ui-dir", dist, ...extra);
  const line = await p.waitFor(/http:\/\/127\.0\.0\.1:\d+\/\S*#token=\S+/, 60_000, "the UI's URL");
  const url = /http:\/\/127\.0\.0\.1:\d+\/\S*#token=\S+/.exec(line)[0];
  return { proc: p, url };
}

export async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--font-render-hinting=none"],
  });
}

/** Resolves once `check()` (async) is true, trying again every 200 ms; rejects after `ms`. */
export async function until(check, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Median and 99th percentile (nearest rank) of `xs`. */
export function summarize(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
  return { n: s.length, median: at(0.5), p99: at(0.99), max: s[s.length - 1] };
}
