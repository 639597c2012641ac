// End-to-end: the real UI served by `flyt serve --ui` on a fresh home, driven in Chromium,
// chatting with a second real `flyt` node (bob, on the CLI). Usage: npm run e2e
// (needs `cargo build -p cli` and /usr/bin/chromium). Exits non-zero on the first failure.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { browser, flyt, serveUi, start, tempHome, until } from "./lib.mjs";

const T = 20_000; // the longest any single step may wait
const deadline = setTimeout(() => {
  console.error("e2e: over the 5-minute budget");
  process.exit(1);
}, 300_000);

const out = join(import.meta.dirname, "out");
let failures = 0;
async function step(name, f) {
  const t = Date.now();
  try {
    await f();
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}\n${e.stack ?? e}`);
    mkdirSync(out, { recursive: true });
    await page.screenshot({ path: join(out, "failure.png") }).catch(() => undefined);
    console.log(`(screenshot of the page: ${join(out, "failure.png")})`);
    throw e;
  }
}

const aliceHome = tempHome("alice");
const bobHome = tempHome("bob");
const { url } = await serveUi(aliceHome);
const b = await browser();
const page = await b.newPage({ viewport: { width: 1280, height: 800 } });
page.on("dialog", (d) => void d.accept());
page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
page.setDefaultTimeout(T);

const composer = () => page.getByRole("textbox", { name: /^Message #/ });
const message = (text) => page.getByTestId("message").filter({ hasText: text });
let bobTail;

try {
  await step("onboarding: name, then a garbage ticket is refused kindly, then create a workspace", async () => {
    await page.goto(url);
    await page.getByLabel("Your name").fill("alice");
    await page.getByRole("button", { name: "Continue" }).click();
    await page.getByRole("tab", { name: "Join with an invite" }).click();
    await page.getByLabel("Invite ticket").fill("flyt1-this-is-not-a-ticket");
    await page.getByRole("button", { name: "Join workspace" }).click();
    const err = page.getByRole("alert");
    await err.waitFor();
    const text = await err.innerText();
    assert.match(text, /ticket|invite/i, `a friendly error, got ${text}`);
    assert.doesNotMatch(text, /panic|internal|undefined/i);
    await page.getByRole("tab", { name: "Create a workspace" }).click();
    await page.getByLabel("Workspace name").fill("Acme");
    await page.getByRole("button", { name: "Create workspace" }).click();
    await composer().waitFor();
    assert.equal(await page.locator(".ws-header h1").innerText(), "Acme");
  });

  await step("send: the message shows at once, with Markdown", async () => {
    await composer().fill("Hello **team**, see `README.md`");
    await composer().press("Enter");
    await message("Hello team").locator("strong", { hasText: "team" }).waitFor();
    await message("Hello team").locator("code", { hasText: "README.md" }).waitFor();
    assert.equal(await composer().inputValue(), "");
  });

  await step("a 40,001-character message is refused with a clear message and kept", async () => {
    const long = "x".repeat(40_001);
    await composer().fill(long);
    await page.getByRole("alert").filter({ hasText: "at most 40,000 characters" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Send" }).isDisabled(), true);
    await composer().press("Enter");
    assert.equal((await composer().inputValue()).length, 40_001, "the text is not lost");
    await composer().fill("");
  });

  await step("invite bob (a CLI node) with a ticket copied from the UI", async () => {
    await page.getByRole("button", { name: "Invite people" }).click();
    await page.getByRole("button", { name: "Create invite ticket" }).click();
    const ticket = await page.getByLabel("Invite ticket").inputValue();
    assert.match(ticket, /^flyt1/);
    await page.keyboard.press("Escape");
    await flyt(bobHome, "init", "--name", "bob");
    await flyt(bobHome, "join", ticket, "--bind", "127.0.0.1:0");
    start(bobHome, "serve", "--bind", "127.0.0.1:0");
    bobTail = start(bobHome, "--json", "tail", "general");
  });

  await step("receive: bob's message arrives live", async () => {
    await flyt(bobHome, "send", "general", "hi @alice, bob here");
    await message("bob here").waitFor();
    await message("bob here").locator(".mention.me").waitFor();
  });

  await step("bob receives what alice sends from the UI", async () => {
    await composer().fill("welcome bob");
    await composer().press("Enter");
    await bobTail.waitFor(/welcome bob/, T, "bob's tail to print alice's message");
  });

  await step("DM: start one with bob from the sidebar; he gets it, his answer arrives", async () => {
    await page.getByRole("button", { name: "New direct message" }).click();
    const dialog = page.getByRole("dialog", { name: "New direct message" });
    await dialog.getByRole("checkbox", { name: "bob" }).check();
    await dialog.getByRole("button", { name: "Open conversation" }).click();
    const dmBox = page.getByRole("textbox", { name: "Message bob" });
    await dmBox.waitFor();
    // The sidebar lists it under Direct messages by bob's name.
    const row = page.getByTestId("channel-@bob");
    assert.equal((await row.innerText()).trim(), "bob");
    await dmBox.fill("just between us, bob");
    await dmBox.press("Enter");
    await message("just between us, bob").waitFor();
    // On bob's node (through his running `flyt serve`), the DM with alice holds it.
    // (`read @alice` fails until the DM itself has arrived.)
    await until(async () => {
      const msgs = await flyt(bobHome, "--json", "read", "@alice").catch(() => []);
      return msgs.some((m) => m.text === "just between us, bob" && m.author.name === "alice");
    }, T, "alice's DM to reach bob");
    const listed = await flyt(bobHome, "--json", "channel", "list");
    assert.ok(listed.some((c) => c.dm && c.name === "@alice"), JSON.stringify(listed));
    await flyt(bobHome, "dm", "alice", "got it, alice");
    await message("got it, alice").waitFor();
  });

  await step("DM: the member list's Message opens the same conversation", async () => {
    await page.getByTestId("channel-general").click();
    await composer().waitFor();
    await page.getByRole("button", { name: "Members" }).first().click();
    const dialog = page.getByRole("dialog", { name: /^Members/ });
    await dialog.getByTestId("member").filter({ hasText: "bob" }).getByRole("button", { name: "Message" }).click();
    await page.getByRole("textbox", { name: "Message bob" }).waitFor();
    await message("got it, alice").waitFor();
    assert.equal(await page.getByTestId("channel-@bob").count(), 1, "one DM with bob, not two");
    await page.getByTestId("channel-general").click();
    await composer().waitFor();
  });

  await step("react with the hover bar and the picker", async () => {
    const m = message("welcome bob");
    await m.hover();
    await m.getByRole("button", { name: "React 🎉" }).click();
    await m.getByRole("button", { name: "🎉 1" }).waitFor();
    await m.hover();
    await m.getByRole("toolbar").getByRole("button", { name: "Add reaction" }).click();
    await page.getByRole("dialog", { name: "Pick a reaction" }).getByPlaceholder("Search emoji").fill("rocket");
    await page.getByRole("dialog", { name: "Pick a reaction" }).getByRole("button", { name: "🚀" }).click();
    await m.getByRole("button", { name: "🚀 1" }).waitFor();
  });

  await step("reply in a thread", async () => {
    const m = message("bob here");
    await m.hover();
    await m.getByRole("button", { name: "Reply in thread" }).click();
    const thread = page.getByRole("complementary", { name: "Thread" });
    await thread.getByRole("textbox", { name: "Reply…" }).fill("a threaded reply");
    await thread.getByRole("textbox", { name: "Reply…" }).press("Enter");
    await thread.getByTestId("message").filter({ hasText: "a threaded reply" }).waitFor();
    await page.getByRole("main").getByRole("button", { name: "1 reply" }).waitFor();
    // bob's tail of #general reports the root with its new reply count.
    await bobTail.waitFor(/"reply_count":1/, T, "bob to get the reply");
    await thread.getByRole("button", { name: "Close thread" }).click();
  });

  await step("edit with Up, then in place; bob sees the edit", async () => {
    await composer().click();
    await composer().press("ArrowUp");
    const box = page.getByLabel("Edit message");
    await box.waitFor();
    await box.fill("welcome aboard, bob");
    await box.press("Enter");
    await message("welcome aboard, bob").locator(".edited").waitFor();
    await bobTail.waitFor(/welcome aboard, bob/, T, "bob to see the edit");
  });

  await step("delete for everyone", async () => {
    const m = message("Hello team");
    await m.hover();
    await m.getByRole("button", { name: "Delete" }).click();
    await page.getByTestId("message").filter({ hasText: "This message was deleted." }).waitFor();
  });

  await step("search with Ctrl+K and jump to the message", async () => {
    await page.keyboard.press("Control+k");
    await page.getByLabel("Search query").fill("threaded");
    const r = page.getByTestId("search-result").filter({ hasText: "a threaded reply" });
    await r.waitFor();
    await r.click();
    await page.getByRole("complementary", { name: "Thread" }).getByTestId("message").filter({ hasText: "a threaded reply" }).waitFor();
  });

  await step("unread badge: a message in another channel counts until opened", async () => {
    await page.getByRole("button", { name: "Create a channel" }).click();
    await page.getByLabel("Name", { exact: true }).fill("random");
    await page.getByRole("button", { name: "Create", exact: true }).click();
    await page.getByRole("textbox", { name: "Message #random" }).waitFor();
    await flyt(bobHome, "send", "general", "are you there?");
    const badge = page.getByTestId("channel-general").getByLabel("1 unread");
    await badge.waitFor();
    await page.getByTestId("channel-general").click();
    await message("are you there?").waitFor();
    await badge.waitFor({ state: "detached" });
  });

  await step("history: a fresh page scrolls back through older pages to the channel's start", async () => {
    for (let i = 0; i < 70; i++) await flyt(bobHome, "send", "general", `backlog ${i}`);
    await page.reload();
    await message("backlog 69").waitFor();
    assert.equal(await message("backlog 0").count(), 0, "the first page holds only the newest 50");
    const list = page.getByTestId("message-list");
    const start = page.getByRole("heading", { name: "Welcome to #general" });
    for (let i = 0; i < 40 && !(await start.isVisible()); i++) {
      await list.evaluate((el) => (el.scrollTop = 0));
      await page.waitForFunction(() => !document.querySelector(".history-loading")?.textContent, null, { timeout: T });
    }
    await start.waitFor();
    await message("hi @alice, bob here").waitFor();
    await page.getByTestId("message").filter({ hasText: "This message was deleted." }).waitFor();
  });

  await step("settings: a relay URL that does not answer is refused kindly and adds nothing", async () => {
    await page.getByRole("button", { name: "Settings" }).click();
    const relays = page.getByTestId("relays");
    await relays.getByText("No relays yet").waitFor();
    await relays.getByLabel("Relay URL").fill("http://127.0.0.1:1");
    await relays.getByRole("button", { name: "Add relay" }).click();
    const err = relays.getByRole("alert");
    await err.waitFor();
    const text = await err.innerText();
    assert.equal(text, "Nothing answered at http://127.0.0.1:1; check the address and that the relay is running.");
    assert.equal(await relays.getByTestId("relay").count(), 0);
    await relays.getByLabel("Relay URL").fill("relay.example.com");
    await relays.getByRole("button", { name: "Add relay" }).click();
    await relays.getByRole("alert").filter({ hasText: "starts with http://" }).waitFor();
    // Nothing recorded: the CLI (through alice's running node) lists no relay either.
    assert.deepEqual(await flyt(aliceHome, "--json", "relay", "list"), []);
  });

  await step("settings: link a device with the ticket; it shows among the devices", async () => {
    const devices = page.getByTestId("devices");
    await devices.getByTestId("device").filter({ hasText: "This device" }).waitFor();
    await devices.getByRole("button", { name: "Link a new device" }).click();
    const ticket = await devices.getByLabel("Device link ticket").inputValue();
    assert.match(ticket, /^flytdev1/);
    await devices.getByText("flyt device join TICKET").waitFor();
    const laptop = tempHome("alice-laptop");
    await flyt(laptop, "device", "join", ticket, "--bind", "127.0.0.1:0");
    start(laptop, "serve", "--bind", "127.0.0.1:0");
    await devices.getByTestId("device").filter({ hasText: "Another device" }).filter({ hasText: "Connected" }).waitFor();
    await page.keyboard.press("Escape");
  });

  await step("members: roles, promote and remove", async () => {
    await page.getByRole("button", { name: "Members" }).first().click();
    const dialog = page.getByRole("dialog", { name: /^Members/ });
    const bobRow = dialog.getByTestId("member").filter({ hasText: "bob" });
    await bobRow.locator(".role", { hasText: "member" }).waitFor();
    await dialog.getByTestId("member").filter({ hasText: "alice (you)" }).locator(".role", { hasText: "owner" }).waitFor();
    await bobRow.getByRole("button", { name: "Make admin" }).click();
    await bobRow.locator(".role", { hasText: "admin" }).waitFor();
    await bobRow.getByRole("button", { name: "Remove" }).click();
    await bobRow.waitFor({ state: "detached" });
    await page.keyboard.press("Escape");
  });

  await step("workspaces: create a second one, switch back with the rail", async () => {
    await page.getByRole("button", { name: "Add a workspace" }).click();
    await page.getByLabel("Workspace name").fill("Side project");
    await page.getByRole("button", { name: "Create workspace" }).click();
    await page.locator(".ws-header h1", { hasText: "Side project" }).waitFor();
    await page.getByRole("button", { name: "Workspace Acme" }).click();
    await page.locator(".ws-header h1", { hasText: "Acme" }).waitFor();
    await message("backlog 69").waitFor();
  });
} catch {
  // step() printed it
} finally {
  clearTimeout(deadline);
  await b.close();
}
console.log(failures ? "e2e: FAILED" : "e2e: all passed");
process.exit(failures ? 1 : 0);
