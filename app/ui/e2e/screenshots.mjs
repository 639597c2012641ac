// Screenshots of the main screen in light and dark themes with a realistic conversation
// between three real nodes (the UI's home and two CLI homes). Writes e2e/out/light.png and
// e2e/out/dark.png, then a DM (dm.png) and Settings (settings.png, with a real relay when a
// `flyt-relay` binary is built beside `flyt`). Usage: npm run screenshots

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { browser, flyt, serveUi, start, startRelay, tempHome } from "./lib.mjs";

const out = join(import.meta.dirname, "out");
mkdirSync(out, { recursive: true });

const maya = tempHome("maya");
await flyt(maya, "init", "--name", "maya");
await flyt(maya, "workspace", "create", "Acme");
await flyt(maya, "channel", "create", "general", "--topic", "Company-wide announcements");
await flyt(maya, "channel", "create", "engineering", "--topic", "Builds, reviews and the release train");
await flyt(maya, "channel", "create", "design");
await flyt(maya, "channel", "create", "random");
const { proc, url } = await serveUi(maya);

const people = {};
for (const name of ["jonas", "priya"]) {
  const home = tempHome(name);
  await flyt(home, "init", "--name", name);
  const ticket = (await flyt(maya, "invite")).split(/\s+/).find((w) => w.startsWith("flyt1"));
  await flyt(home, "join", ticket, "--bind", "127.0.0.1:0");
  const node = start(home, "serve", "--bind", "127.0.0.1:0");
  const tail = start(home, "--json", "tail", "engineering");
  people[name] = { home, node, tail };
}

const say = async (who, channel, text, extra = []) => {
  const home = who === "maya" ? maya : people[who].home;
  const m = await flyt(home, "--json", "send", channel, text, ...extra);
  return m.id;
};
const react = (who, id, emoji) => flyt(who === "maya" ? maya : people[who].home, "react", id, emoji);
/** Waits until everyone's node has message `id` of #engineering. */
const synced = (id) => Promise.all(Object.values(people).map((p) => p.tail.waitFor(new RegExp(id), 30_000, `message ${id}`)));

await say("jonas", "general", "Morning all! Release notes for 0.9 are in the wiki.");
await say("priya", "design", "@maya could you look at the new sidebar spacing before lunch?");
await say("jonas", "engineering", "Heads up: I'm cutting the **0.9 release branch** at 3pm. Anything that should make it in, merge before then.");
const p1 = await say("priya", "engineering", "The relay fix is in review: https://git.acme.dev/flyt/pull/412");
await say("priya", "engineering", "It bounds frames at 16 MiB, so a bad length prefix can't make us allocate:");
await say("priya", "engineering", "```rust\nif len > MAX_FRAME {\n    return Err(FrameError::TooLarge(len));\n}\n```");
const m1 = await say("maya", "engineering", "Reviewing now. @priya does it also cover the WebSocket framing?");
await synced(m1);
await say("priya", "engineering", "Yes, both go through `read_frame`.", ["--thread", m1]);
await say("jonas", "engineering", "Nice, that closes the fuzzing finding too.", ["--thread", m1]);
const m2 = await say("jonas", "engineering", "> first screen on a new device\nTried it on my new laptop this morning: readable right away. 🎉");
await synced(m2);
await react("maya", m2, "🎉");
await react("priya", m2, "🎉");
await react("priya", m2, "🚀");
await synced(p1);
await react("maya", p1, "👀");
const m3 = await say("maya", "engineering", "Great work, both of you. I'll write it up for the changelog.");
await synced(m3);
await react("jonas", m3, "🙏");
await say("jonas", "random", "Who's in for lunch at the ramen place?");

const b = await browser();
for (const theme of ["light", "dark"]) {
  const page = await b.newPage({ viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1, colorScheme: theme });
  await page.goto(url);
  await page.getByTestId("channel-engineering").click();
  const last = page.getByTestId("message").filter({ hasText: "changelog" });
  await last.waitFor({ timeout: 20_000 });
  await page.getByRole("button", { name: "2 replies" }).waitFor({ timeout: 20_000 });
  await page.getByRole("button", { name: "🎉 2" }).waitFor({ timeout: 20_000 });
  if (theme === "light") {
    // The thread panel open beside the channel.
    await page.getByRole("button", { name: "2 replies" }).click();
    await page.getByRole("complementary", { name: "Thread" }).getByText("fuzzing finding").waitFor({ timeout: 20_000 });
    await page.getByRole("textbox", { name: "Reply…" }).fill("Merged, thanks!");
    await page.mouse.move(700, 300);
  } else {
    await page.getByRole("textbox", { name: "Message #engineering" }).fill("Sounds good, @jo");
    await page.mouse.move(900, 300);
  }
  await page.screenshot({ path: join(out, `${theme}.png`) });
  await page.close();
  console.log(`wrote ${join(out, `${theme}.png`)}`);
}
// A DM with jonas and a group DM, then Settings (relays and devices).
await flyt(people.jonas.home, "dm", "maya", "Got a minute? I'd like a second pair of eyes on the release checklist.");
await flyt(people.jonas.home, "dm", "maya,priya", "Lunch on Friday, the three of us? My treat for shipping 0.9.");
await flyt(maya, "dm", "jonas", "Sure, send it over. I'm free after standup.");
await flyt(people.jonas.home, "dm", "maya", "Here: https://wiki.acme.dev/release/0.9 (the **rollback** part is new)");
const relay = await startRelay();
{
  const page = await b.newPage({ viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1, colorScheme: "light" });
  await page.goto(url);
  await page.getByTestId("channel-@jonas").click();
  await page.getByTestId("message").filter({ hasText: "rollback" }).waitFor({ timeout: 20_000 });
  await page.mouse.move(900, 300);
  await page.screenshot({ path: join(out, "dm.png") });
  console.log(`wrote ${join(out, "dm.png")}`);
  await page.getByRole("button", { name: "Settings" }).click();
  const relays = page.getByTestId("relays");
  if (relay) {
    await relays.getByLabel("Relay URL").fill(relay.url);
    await relays.getByRole("button", { name: "Add relay" }).click();
    await relays.getByTestId("relay").filter({ hasText: "Connected" }).waitFor({ timeout: 20_000 });
  } else {
    console.log("no flyt-relay built beside flyt: Settings without a relay");
  }
  await page.getByTestId("devices").getByRole("button", { name: "Link a new device" }).click();
  await page.getByLabel("Device link ticket").waitFor();
  await page.setViewportSize({ width: 1280, height: 1000 });
  await page.screenshot({ path: join(out, "settings.png") });
  console.log(`wrote ${join(out, "settings.png")}`);
  await page.close();
}
await b.close();
if (relay) await relay.proc.stop();
await proc.stop();
for (const p of Object.values(people)) await Promise.all([p.node.stop(), p.tail.stop()]);
process.exit(0);
