// Finds one document through flyt-relay's /sync with the real automerge-repo client and prints
// it as JSON on the last line. Usage: node sync.mjs WS_URL DOCUMENT_ID [--ephemeral]
// WS_URL carries the signed token: ws://HOST/sync?device=HEX&ts=MS&sig=HEX (see README).
// With --ephemeral (DOCUMENT_ID a workspace), it also waits for the first Flyt typing or
// presence note the relay sends as an automerge-repo `ephemeral` message, and prints instead
// {"keys": [the document's top-level keys], "senderId", "message": the note's fields, with
// `signed` as hex}.
// Exits 1 when the document is unavailable or nothing arrives within 20 s.
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const [url, documentId, flag] = process.argv.slice(2)
if (!url || !documentId || (flag && flag !== "--ephemeral")) {
  console.error("usage: node sync.mjs WS_URL DOCUMENT_ID [--ephemeral]")
  process.exit(2)
}
const adapter = new WebSocketClientAdapter(url, 0)
const repo = new Repo({ network: [adapter] })
const timer = setTimeout(() => {
  console.error("timed out")
  process.exit(1)
}, 20_000)

// Bytes as hex, 64-bit integers as numbers: JSON for the test to read.
const json = value =>
  JSON.stringify(value, (_, v) =>
    typeof v === "bigint"
      ? Number(v)
      : v instanceof Uint8Array
        ? Buffer.from(v).toString("hex")
        : v,
  )

try {
  if (flag === "--ephemeral") {
    // Listen before the document is ready: the relay tells who is around as soon as it is
    // asked for the workspace.
    const { handle } = repo.findWithProgress(documentId)
    const note = new Promise(resolve => handle.on("ephemeral-message", resolve))
    await handle.whenReady(["ready", "unavailable"])
    if (handle.state !== "ready") throw new Error(`Document ${documentId} is unavailable`)
    const { senderId, message } = await note
    console.log(json({ keys: Object.keys(handle.doc()), senderId, message }))
  } else {
    const handle = await repo.find(documentId)
    console.log(JSON.stringify(handle.doc()))
  }
  clearTimeout(timer)
  await repo.shutdown().catch(() => {})
  process.exit(0)
} catch (e) {
  console.error(`not synced: ${e.message ?? e}`)
  process.exit(1)
}
